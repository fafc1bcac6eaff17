"""The audio front end matches librosa and AudioLDM's settings; files read and write faithfully."""
import numpy as np
import pytest
import soundfile as sf
import torch

from melfusion.audio.io import read_audio, resample, write_wav
from melfusion.audio.mel import MelConfig, MelSpectrogram, fit_frames, frames_for, mel_filter_bank
from melfusion.errors import MelFusionError

librosa = pytest.importorskip("librosa")


def test_mel_filter_bank_matches_librosa_slaney():
    ours = mel_filter_bank(MelConfig())
    ref = librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmin=0.0, fmax=8000.0, htk=False, norm="slaney")
    assert ours.shape == (64, 513)
    np.testing.assert_allclose(ours, ref, atol=1e-8, rtol=1e-5)


def test_log_mel_matches_librosa_stft_pipeline():
    rng = np.random.default_rng(0)
    t = np.arange(24000) / 16000
    wave = (0.4 * np.sin(2 * np.pi * 330 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    ours = MelSpectrogram()(torch.from_numpy(wave))[0].numpy()
    mag = np.abs(librosa.stft(wave, n_fft=1024, hop_length=160, win_length=1024, window="hann",
                              center=True, pad_mode="reflect"))
    ref = np.log(np.maximum(librosa.filters.mel(sr=16000, n_fft=1024, n_mels=64, fmax=8000) @ mag, 1e-5)).T
    assert ours.shape == ref.shape == (1 + 24000 // 160, 64)
    np.testing.assert_allclose(ours, ref, atol=2e-4)


def test_a_tone_lands_in_its_mel_band():
    cfg = MelConfig()
    wave = torch.sin(2 * np.pi * 1000 * torch.arange(16000) / 16000)
    mel = MelSpectrogram(cfg)(wave)[0]
    peak_band = int(mel.mean(0).argmax())
    centres = librosa.mel_frequencies(n_mels=66, fmin=0, fmax=8000)[1:-1]
    assert abs(centres[peak_band] - 1000) < 60


def test_frames_cover_duration_and_divide_by_multiple():
    cfg = MelConfig()
    assert frames_for(10.0, cfg, 32) == 1024  # AudioLDM's 10.24 s window
    assert frames_for(2.0, cfg, 16) == 208
    mel = torch.zeros(2, 50, 64)
    assert fit_frames(mel, 64).shape == (2, 64, 64)
    assert fit_frames(mel, 64)[0, -1, 0].item() == pytest.approx(np.log(1e-5))
    assert fit_frames(mel, 20).shape == (2, 20, 64)


def test_wav_round_trip_is_16_bit_accurate(tmp_path):
    wave = np.sin(np.linspace(0, 200, 16000)).astype(np.float32) * 0.8
    path = write_wav(tmp_path / "a.wav", wave, 16000)
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    back = read_audio(path, 16000)
    assert back.shape == wave.shape
    assert np.abs(back - wave).max() < 1.0 / 32767 + 1e-6
    assert not list(tmp_path.glob(".tmp-*"))


def test_stereo_flac_at_44k1_is_mixed_down_and_resampled(tmp_path):
    t = np.arange(44100) / 44100
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, -left + 0.2 * np.sin(2 * np.pi * 880 * t)], axis=1).astype(np.float32)
    sf.write(str(tmp_path / "s.flac"), stereo, 44100)
    wave = read_audio(tmp_path / "s.flac", 16000)
    assert wave.shape == (16000,)
    # The 440 Hz parts cancel in the mix; the 880 Hz tone (amplitude 0.1) remains.
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) - 880) <= 1
    assert 0.08 < np.abs(wave[1000:-1000]).max() < 0.12


def test_resample_preserves_a_tone():
    t = np.arange(48000) / 48000
    out = resample(np.sin(2 * np.pi * 500 * t).astype(np.float32), 48000, 16000)
    assert out.shape == (16000,)
    assert abs(np.argmax(np.abs(np.fft.rfft(out))) - 500) <= 1


def test_unreadable_audio_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF nonsense")
    with pytest.raises(MelFusionError, match="cannot read audio"):
        read_audio(bad)
    with pytest.raises(MelFusionError, match="not found"):
        read_audio(tmp_path / "missing.wav")
