"""The frozen T2I side: image encoding, DDIM inversion that sampling retraces, key/value capture."""
import pytest
import torch

from melfusion.errors import MelFusionError
from melfusion.images import image_to_tensor
from melfusion.t2i.model import TextToImageModel


@pytest.fixture(scope="module")
def z0(tiny_pipe, example_image):
    pixels = image_to_tensor(example_image, tiny_pipe.t2i.image_size)[None]
    return tiny_pipe.t2i.encode_image(pixels)


def _relative_error(a, b):
    return float((a - b).norm() / b.norm())


def test_refined_inversion_then_ddim_sampling_reconstructs_the_image_latent(tiny_pipe, z0):
    t2i = tiny_pipe.t2i
    assert z0.shape == (1, 4, 8, 8)
    traj = t2i.invert(z0, 25, refine_iters=5)
    assert traj.latents.shape == (26, 1, 4, 8, 8)
    assert traj.timesteps[0] == -1 and traj.timesteps[1:] == sorted(traj.timesteps[1:])
    back = t2i.sample_from(traj.latents[-1], 25)
    # Measured 7.8e-4 with 5 fixed-point iterations per step (random tiny UNet).
    assert _relative_error(back, z0) < 1e-2
    # The end of the trajectory is far from the image: the round trip is not trivial.
    assert _relative_error(traj.latents[-1], z0) > 0.5


def test_plain_ddim_inversion_error_shrinks_with_more_steps(tiny_pipe, z0):
    t2i = tiny_pipe.t2i
    errors = [_relative_error(t2i.sample_from(t2i.invert(z0, n).latents[-1], n), z0) for n in (10, 50)]
    # Measured 0.80 and 0.46: a random UNet is far from smooth, so plain inversion is coarse.
    assert errors[1] < errors[0]
    assert errors[1] < 0.6


def test_capture_keeps_pooled_decoder_self_attention_keys_and_values(tiny_pipe, z0):
    t2i = tiny_pipe.t2i
    assert t2i.layer_names and all(n.startswith("up_blocks.") and "attn1" in n for n in t2i.layer_names)
    traj = t2i.invert(z0, 4, capture_tokens=16)
    assert traj.features[0] is None and len(traj.features) == 5
    for step in traj.features[1:]:
        assert len(step) == len(t2i.layer_names)
        for (k, v), dim in zip(step, t2i.layer_dims):
            assert k.shape == v.shape == (1, 16, dim)
    # Features depend on the noise level they were read at.
    assert not torch.allclose(traj.features[1][0][0], traj.features[4][0][0])
    # Capturing does not change the UNet's output.
    plain = t2i.invert(z0, 4)
    assert torch.equal(plain.latents, traj.latents)


def test_features_depend_on_the_image(tiny_pipe, z0):
    t2i = tiny_pipe.t2i
    other = t2i.encode_image(torch.rand(1, 3, t2i.image_size, t2i.image_size, generator=torch.Generator().manual_seed(1)))
    a = t2i.invert(z0, 3, capture_tokens=16).features[2][0][0]
    b = t2i.invert(other, 3, capture_tokens=16).features[2][0][0]
    assert (a - b).abs().max() > 1e-3


def test_t2i_is_frozen(tiny_pipe):
    t2i = tiny_pipe.t2i
    assert not any(p.requires_grad for p in t2i.parameters())


def test_stable_diffusion_layout_round_trip(tiny_pipe, z0, tmp_path):
    tiny_pipe.t2i.save_pretrained(tmp_path / "sd")
    for part in ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json", "text_encoder/config.json"):
        assert (tmp_path / "sd" / part).is_file()
    loaded = TextToImageModel.from_pretrained(tmp_path / "sd")
    assert loaded.layer_names == tiny_pipe.t2i.layer_names
    a = tiny_pipe.t2i.invert(z0, 3, capture_tokens=16)
    b = loaded.invert(z0, 3, capture_tokens=16)
    assert torch.allclose(a.latents, b.latents, atol=1e-5)
    assert torch.allclose(a.features[3][-1][1], b.features[3][-1][1], atol=1e-5)


def test_missing_parts_of_a_t2i_directory_are_named(tmp_path):
    (tmp_path / "sd" / "unet").mkdir(parents=True)
    with pytest.raises(MelFusionError, match="no vae/ folder"):
        TextToImageModel.from_pretrained(tmp_path / "sd")
