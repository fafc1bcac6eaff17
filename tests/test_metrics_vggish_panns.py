"""VGGish and PANNs CNN14: front ends, published checkpoint layouts, round trips, refusals."""
import numpy as np
import pytest
import torch

from melfusion.errors import MelFusionError
from melfusion.metrics.embedders import load_embedder
from melfusion.metrics.embedders.panns import CNN14_16K, CNN14_32K, PANNs, Cnn14, save_panns_layout
from melfusion.metrics.embedders.vggish import (VGGish, VGGishNet, examples, log_mel, save_torchvggish_layout,
                                                vggish_mel_matrix)

TINY_VGG = dict(channels=(4, 8, 8, 8, 8, 8), hidden=(16, 16))
TINY_CNN14 = dict(channels=(4, 4, 8, 8, 8, 16), fc_dim=16, classes=7)


def tone(freq, seconds, rate):
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ---- VGGish ----

def test_vggish_log_mel_follows_the_original_framing_and_constants():
    wave = np.random.default_rng(0).normal(size=16000).astype(np.float32)
    mel = log_mel(wave)
    assert mel.shape == (1 + (16000 - 400) // 160, 64)
    # frame 3 by hand: 400 samples from 480, periodic Hann, 512-point FFT magnitude, +0.01, log
    frame = wave[480:880].astype(np.float64) * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400))
    expected = np.log(np.abs(np.fft.rfft(frame, 512)) @ vggish_mel_matrix() + 0.01)
    assert np.allclose(mel[3], expected, atol=1e-10)


def test_vggish_mel_bands_span_125_to_7500_hz_and_skip_dc():
    bank = vggish_mel_matrix()
    assert bank.shape == (257, 64) and (bank[0] == 0).all()
    freqs = np.linspace(0, 8000, 257)
    used = freqs[bank.sum(axis=1) > 0]
    assert 125 < used.min() < 160 and 7440 < used.max() < 7500
    # A 1 kHz tone peaks in the band whose HTK-mel centre is nearest 1000 mel (1 kHz).
    peak = log_mel(tone(1000, 1.0, 16000)).mean(axis=0).argmax()
    centres = np.linspace(1127 * np.log1p(125 / 700), 1127 * np.log1p(7500 / 700), 66)[1:-1]
    assert abs(peak - np.abs(centres - 1127 * np.log1p(1000 / 700)).argmin()) <= 1


def test_vggish_examples_are_non_overlapping_096s_patches_and_short_clips_give_one():
    assert examples(np.zeros(16000 * 3)).shape == (3, 96, 64)
    assert examples(np.zeros(100)).shape == (1, 96, 64)


def test_vggish_loads_the_torchvggish_layout_and_round_trips(tmp_path):
    torch.manual_seed(0)
    net = VGGishNet(**TINY_VGG)
    rng = np.random.default_rng(1)
    pca = (np.linalg.qr(rng.normal(size=(128, 128)))[0], rng.normal(size=128) * 0.01)
    save_torchvggish_layout(net, tmp_path, pca)
    state = torch.load(tmp_path / "vggish-10086976.pth")
    assert {"features.0.weight", "features.13.bias", "embeddings.0.weight", "embeddings.4.weight"} <= set(state)
    assert state["embeddings.0.weight"].shape == (16, 8 * 6 * 4)

    waves = [tone(440, 2.0, 16000), rng.normal(size=24000).astype(np.float32) * 0.1]
    direct = VGGish(net).embed(waves)
    loaded = load_embedder(f"vggish:{tmp_path}")
    assert loaded.sample_rate == 16000 and loaded.dim == 128
    assert direct.shape == (2, 128) and np.array_equal(direct, loaded.embed(waves))
    frames = loaded.embed_frames(waves)
    assert [f.shape for f in frames] == [(2, 128), (1, 128)]
    assert np.allclose(frames[0].mean(axis=0), direct[0], atol=1e-6)

    quantised = load_embedder(f"vggish:{tmp_path}", pca=True, final_relu=True).embed_frames(waves)[0]
    assert quantised.min() >= 0 and quantised.max() <= 255 and np.array_equal(quantised, np.round(quantised))
    by_hand = np.maximum(frames[0].astype(np.float64), 0) - pca[1]
    by_hand = np.round((np.clip(by_hand @ pca[0].T, -2, 2) + 2) * 255 / 4)
    assert np.abs(quantised - by_hand).max() <= 1  # float32 network output may flip a rounding

    (tmp_path / "vggish_pca_params-970ea276.pth").unlink()
    np.savez(tmp_path / "vggish_pca_params.npz", pca_eigen_vectors=pca[0], pca_means=pca[1])
    from_npz = load_embedder(f"vggish:{tmp_path / 'vggish-10086976.pth'}", pca=True, final_relu=True)
    assert np.array_equal(from_npz.embed_frames(waves)[0], quantised)


def test_vggish_resamples_waves_given_at_another_rate(tmp_path):
    net = VGGishNet(**TINY_VGG)
    model = VGGish(net)
    at_32k = tone(440, 1.5, 32000)
    assert model.embed([at_32k], sample_rate=32000).shape == (1, 128)
    assert not np.allclose(model.embed([at_32k], sample_rate=32000), model.embed([at_32k]))


# ---- PANNs CNN14 ----

def test_panns_front_end_equals_librosa_power_mel_in_db():
    librosa = pytest.importorskip("librosa")
    model = PANNs(Cnn14(**TINY_CNN14))
    wave = np.random.default_rng(2).normal(size=32000).astype(np.float32) * 0.1
    ours = model.log_mel(torch.from_numpy(wave)[None])[0, 0].double().numpy()
    power = np.abs(librosa.stft(wave.astype(np.float64), n_fft=1024, hop_length=320, window="hann", center=True,
                                pad_mode="reflect")) ** 2
    bank = librosa.filters.mel(sr=32000, n_fft=1024, n_mels=64, fmin=50, fmax=14000)
    expected = 10 * np.log10(np.maximum(bank @ power, 1e-10)).T
    assert ours.shape == (1 + 32000 // 320, 64)
    assert np.abs(ours - expected).max() < 1e-3


def test_panns_loads_its_checkpoint_layout_and_round_trips(tmp_path):
    torch.manual_seed(3)
    net = Cnn14(**TINY_CNN14)
    for m in net.modules():  # non-trivial running statistics, as a trained model has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    model = PANNs(net)
    path = save_panns_layout(model, tmp_path / "Cnn14_mAP=0.431.pth")
    ckpt = torch.load(path)
    assert set(ckpt) >= {"model"} and ckpt["model"]["logmel_extractor.melW"].shape == (513, 64)
    assert ckpt["model"]["spectrogram_extractor.stft.conv_real.weight"].shape == (513, 1, 1024)

    loaded = load_embedder(f"panns:{path}")
    waves = [tone(880, 1.0, 32000), np.random.default_rng(4).normal(size=20000).astype(np.float32) * 0.1]
    assert loaded.sample_rate == 32000 and loaded.dim == 16 and loaded.num_labels == 7
    emb, logits = loaded.embed(waves), loaded.label_logits(waves)
    assert emb.shape == (2, 16) and logits.shape == (2, 7) and (emb >= 0).all()
    assert np.array_equal(emb, model.embed(waves)) and np.array_equal(logits, model.label_logits(waves))
    assert loaded.embed([np.zeros(100, np.float32)]).shape == (1, 16)  # very short clips are padded


def test_panns_16k_checkpoint_is_recognised_by_its_stft_kernels(tmp_path):
    model = PANNs(Cnn14(**TINY_CNN14), CNN14_16K)
    path = save_panns_layout(model, tmp_path / "Cnn14_16k_mAP=0.438.pth")
    loaded = load_embedder(f"panns:{path}")
    assert loaded.front == CNN14_16K and loaded.sample_rate == 16000
    assert loaded.embed([tone(440, 1.0, 48000)], sample_rate=48000).shape == (1, 16)


def test_panns_bare_state_dict_without_front_end_defaults_to_32k(tmp_path):
    torch.save(Cnn14(**TINY_CNN14).state_dict(), tmp_path / "cnn14.pth")
    assert load_embedder(f"panns:{tmp_path / 'cnn14.pth'}").front == CNN14_32K


# ---- refusals ----

@pytest.mark.parametrize("kind", ["vggish", "panns"])
def test_missing_or_malformed_checkpoints_give_one_line_errors(tmp_path, kind):
    with pytest.raises(MelFusionError) as info:
        load_embedder(f"{kind}:{tmp_path / 'nowhere.pth'}")
    assert "\n" not in str(info.value)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(MelFusionError, match="cannot read") as info:
        load_embedder(f"{kind}:{tmp_path / 'junk.pth'}")
    assert "\n" not in str(info.value)
    torch.save({"model": {"x": torch.zeros(1)}, "x": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(MelFusionError, match="not a"):
        load_embedder(f"{kind}:{tmp_path / 'other.pth'}")


def test_load_embedder_parses_specs_and_refuses_bad_ones():
    with pytest.raises(MelFusionError, match="KIND:PATH"):
        load_embedder("vggish")
    with pytest.raises(MelFusionError, match="unknown embedder kind 'openl3'"):
        load_embedder("openl3:/x")


def test_bad_waves_are_refused():
    model = VGGish(VGGishNet(**TINY_VGG))
    with pytest.raises(MelFusionError, match="list of waveforms"):
        model.embed(np.zeros(16000))
    with pytest.raises(MelFusionError, match="empty"):
        model.embed([np.zeros(0)])
    with pytest.raises(MelFusionError, match="mono"):
        model.embed([np.zeros((2, 100))])
