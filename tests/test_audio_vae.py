"""The audio VAE compresses a log-mel 4x in time and frequency into 8 channels."""
import pytest
import torch
from diffusers import AutoencoderKL

from melfusion.audio.vae import AudioVAE
from melfusion.errors import MelFusionError
from melfusion.presets import AUDIOLDM_VAE


def test_shapes_and_round_trip_of_the_tiny_vae(tiny_pipe, tmp_path):
    vae = tiny_pipe.audio_vae
    assert vae.factor == 4 and vae.latent_channels == 8
    mel = torch.randn(2, 128, 64) - 4
    z = vae.encode(mel)
    assert z.shape == (2, 8, 32, 16)
    assert vae.decode(z).shape == mel.shape
    vae.save_pretrained(tmp_path / "vae")
    again = AudioVAE.from_pretrained(tmp_path / "vae")
    assert torch.allclose(again.encode(mel), z, atol=1e-6)


def test_sampling_the_posterior_is_seeded(tiny_pipe):
    mel = torch.randn(1, 64, 64)
    a = tiny_pipe.audio_vae.encode(mel, torch.Generator().manual_seed(0), sample=True)
    b = tiny_pipe.audio_vae.encode(mel, torch.Generator().manual_seed(0), sample=True)
    c = tiny_pipe.audio_vae.encode(mel)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_audioldm_vae_shape_on_the_meta_device():
    with torch.device("meta"):
        vae = AudioVAE(AutoencoderKL(**AUDIOLDM_VAE))
    assert vae.factor == 4 and vae.latent_channels == 8 and vae.scaling_factor == pytest.approx(0.9227)


def test_missing_vae_is_a_clear_error(tmp_path):
    with pytest.raises(MelFusionError, match="config.json missing"):
        AudioVAE.from_pretrained(tmp_path)
