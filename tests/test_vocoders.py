"""Both vocoders turn a log-mel `(batch, frames, mels)` into a waveform at 16 kHz."""
import numpy as np
import pytest
import torch

from melfusion.audio.mel import MelConfig, MelSpectrogram
from melfusion.audio.vocoder import GriffinLimVocoder, HifiGanVocoder, load_vocoder
from melfusion.errors import MelFusionError


def _chord(seconds=1.0):
    t = torch.arange(int(16000 * seconds)) / 16000
    noise = torch.randn(t.shape, generator=torch.Generator().manual_seed(0))
    return (0.3 * torch.sin(2 * np.pi * 262 * t) + 0.2 * torch.sin(2 * np.pi * 330 * t)
            + 0.2 * torch.sin(2 * np.pi * 392 * t) + 0.02 * noise)[None]


def test_griffin_lim_reconstructs_the_mel_better_than_random_phase_or_pseudo_inverse():
    mel_fn = MelSpectrogram()
    target = mel_fn(_chord())
    voc = GriffinLimVocoder(MelConfig(), n_iter=32)
    wave = voc(target)
    assert wave.shape == (1, (target.shape[1] - 1) * 160)
    assert wave.abs().max() <= 0.9 + 1e-5

    def shape_error(w):  # compare spectral shape, independent of overall level
        m = mel_fn(w)
        return ((m - m.mean()) - (target - target.mean())).abs().mean().item()

    random_phase = GriffinLimVocoder(MelConfig(), n_iter=0)(target)
    pseudo_inverse = GriffinLimVocoder(MelConfig(), n_iter=32, nnls_iter=0)(target)
    # Measured: 0.12 (this), 0.28 (random phase), 0.69 (pseudo-inverse magnitudes).
    assert shape_error(wave) < 0.2
    assert shape_error(wave) < 0.6 * shape_error(random_phase)
    assert shape_error(wave) < 0.4 * shape_error(pseudo_inverse)


def test_griffin_lim_is_deterministic_and_saves_its_settings(tmp_path):
    voc = GriffinLimVocoder(MelConfig(), n_iter=4)
    mel = MelSpectrogram()(_chord(0.5))
    assert torch.equal(voc(mel), voc(mel))
    voc.save_pretrained(tmp_path / "v")
    again = load_vocoder(tmp_path / "v", MelConfig())
    assert isinstance(again, GriffinLimVocoder) and again.n_iter == 4
    assert torch.equal(again(mel), voc(mel))


def _tiny_hifigan():
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    torch.manual_seed(0)
    cfg = SpeechT5HifiGanConfig(model_in_dim=64, sampling_rate=16000, upsample_initial_channel=32,
                                upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[10, 8, 4, 4, 4],
                                resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], normalize_before=False)
    return SpeechT5HifiGan(cfg)


def test_hifigan_loads_from_a_speecht5_directory_and_round_trips(tmp_path):
    model = _tiny_hifigan()
    model.save_pretrained(str(tmp_path / "vocoder"))  # the bare layout AudioLDM ships
    voc = load_vocoder(tmp_path / "vocoder", MelConfig())
    assert isinstance(voc, HifiGanVocoder) and voc.sample_rate == 16000
    mel = MelSpectrogram()(_chord(0.5))
    wave = voc(mel)
    # Upsampling by 5*4*2*2*2 = 160 (the hop); transposed-conv edges add a few samples.
    assert wave.shape[0] == 1 and abs(wave.shape[1] - mel.shape[1] * 160) <= 64
    expected = HifiGanVocoder(model)(mel)
    assert torch.allclose(wave, expected, atol=1e-6)
    voc.save_pretrained(tmp_path / "again")
    assert torch.allclose(load_vocoder(tmp_path / "again", MelConfig())(mel), expected, atol=1e-6)


def test_missing_vocoder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MelFusionError, match="no vocoder"):
        load_vocoder(tmp_path / "empty", MelConfig())
