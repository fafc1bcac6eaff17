"""The lean AutoencoderKL computes what diffusers' does, loads its files, and never imports it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL

from melfusion.lean import Unsupported
from melfusion.lean.vae import LeanAutoencoderKL
from melfusion.presets import AUDIOLDM_VAE, PRESETS, SD15_VAE

ROOT = Path(__file__).parents[1]
DEFAULT = ROOT / "melfusion" / "assets" / "default"


def close(ours: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    scale = max(1.0, ref.abs().max().item())
    diff = (ours - ref).abs().max().item()
    assert diff < rel * scale, f"max abs diff {diff} at output scale {scale}"


def compare(directory: Path, x: torch.Tensor) -> None:
    """Encode mean/std, decode and seeded sampling of the lean model against diffusers'."""
    ref = AutoencoderKL.from_pretrained(str(directory)).eval()
    lean = LeanAutoencoderKL.from_pretrained(directory)
    assert list(lean.state_dict()) == list(ref.state_dict())
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in lean.parameters())
    assert not lean.training
    with torch.no_grad():
        want, got = ref.encode(x).latent_dist, lean.encode(x).latent_dist
        close(got.mean, want.mean)
        close(got.std, want.std)
        a = want.sample(torch.Generator().manual_seed(7))
        b = got.sample(torch.Generator().manual_seed(7))
        close(b, a)
        assert not torch.equal(b, got.mean)
        z = want.mean
        close(lean.decode(z).sample, ref.decode(z).sample)


def test_default_audio_vae_matches_diffusers():
    torch.manual_seed(0)
    frames = torch.linspace(0, 1, 256)[:, None]
    mels = torch.linspace(0, 1, 64)[None, :]
    log_mel = -6 + 3 * torch.sin(12 * frames) * torch.cos(7 * mels) + 0.5 * torch.randn(256, 64)
    compare(DEFAULT / "audio_vae", log_mel[None, None])


def test_default_t2i_vae_matches_diffusers():
    directory = DEFAULT / "t2i" / "vae"
    size = json.loads((directory / "config.json").read_text())["sample_size"]
    torch.manual_seed(1)
    pixels = torch.rand(1, 3, size, size) * 2 - 1
    compare(directory, pixels)


def test_config_reads_as_the_libraries_config():
    lean = LeanAutoencoderKL.from_pretrained(DEFAULT / "audio_vae")
    saved = json.loads((DEFAULT / "audio_vae" / "config.json").read_text())
    assert lean.config.block_out_channels == saved["block_out_channels"]
    assert lean.config.latent_channels == saved["latent_channels"]
    assert lean.config.scaling_factor == saved["scaling_factor"]
    assert {k: lean.config[k] for k in saved} == saved


RANDOM_CONFIGS = {
    "two-layers-no-mid-attention": dict(
        in_channels=2, out_channels=1, latent_channels=3, layers_per_block=2, norm_num_groups=4,
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, mid_block_add_attention=False, scaling_factor=0.5),
    "three-levels-no-quant-convs": dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
        block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, use_quant_conv=False, use_post_quant_conv=False),
    "one-level-two-layers-attention": dict(
        in_channels=1, out_channels=2, latent_channels=2, layers_per_block=2, norm_num_groups=8,
        block_out_channels=(16,), down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), act_fn="swish"),
}


def save_random(config: dict, directory: Path, seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(**config)
    with torch.no_grad():  # move the norms and biases off their initial 1s and 0s
        for p in vae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    vae.save_pretrained(str(directory))
    return vae


@pytest.mark.parametrize("name", sorted(RANDOM_CONFIGS))
def test_random_configs_match_diffusers(name, tmp_path):
    config = RANDOM_CONFIGS[name]
    save_random(config, tmp_path / name)
    torch.manual_seed(2)
    levels = len(config["block_out_channels"])
    # Non-square, and for the deeper models not a multiple of the downsampling (odd sizes pad).
    x = torch.randn(2, config["in_channels"], 24 if levels < 3 else 20, 40 if levels < 3 else 12)
    compare(tmp_path / name, x)


def test_state_dict_keys_match_for_the_presets_vaes():
    configs = [SD15_VAE, AUDIOLDM_VAE]
    for preset in PRESETS.values():
        configs += [preset["audio_vae"], preset["t2i"]["vae"]]
    for config in configs:
        with torch.device("meta"):
            ref, lean = AutoencoderKL(**config), LeanAutoencoderKL(config)
        assert [(k, v.shape) for k, v in lean.state_dict().items()] == \
            [(k, v.shape) for k, v in ref.state_dict().items()]


def test_sampling_is_seeded_and_uses_the_generator():
    lean = LeanAutoencoderKL.from_pretrained(DEFAULT / "audio_vae")
    x = torch.randn(2, 1, 64, 32)
    with torch.no_grad():
        dist = lean.encode(x).latent_dist
    a = dist.sample(torch.Generator().manual_seed(0))
    b = dist.sample(torch.Generator().manual_seed(0))
    c = dist.sample(torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    noise = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, dist.mean + dist.std * noise)
    assert torch.equal(dist.logvar, dist.logvar.clamp(-30, 20))


def test_old_attention_weight_names_load(tmp_path):
    from safetensors.torch import load_file, save_file

    config = RANDOM_CONFIGS["one-level-two-layers-attention"]
    save_random(config, tmp_path / "new")
    state = load_file(str(tmp_path / "new" / "diffusion_pytorch_model.safetensors"))
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for name, value in state.items():
        for new, old in old_names.items():
            name = name.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        renamed[name] = value
    assert renamed.keys() != state.keys()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
    save_file(renamed, str(tmp_path / "old" / "diffusion_pytorch_model.safetensors"))
    old, new = LeanAutoencoderKL.from_pretrained(tmp_path / "old"), LeanAutoencoderKL.from_pretrained(tmp_path / "new")
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))


def test_save_pretrained_round_trips_through_diffusers(tmp_path):
    lean = LeanAutoencoderKL.from_pretrained(DEFAULT / "t2i" / "vae")
    lean.save_pretrained(tmp_path / "vae")
    ref = AutoencoderKL.from_pretrained(str(tmp_path / "vae"))
    again = LeanAutoencoderKL.from_pretrained(tmp_path / "vae")
    for name, value in lean.state_dict().items():
        assert torch.equal(ref.state_dict()[name], value) and torch.equal(again.state_dict()[name], value)
    assert ref.config.scaling_factor == lean.config.scaling_factor


@pytest.mark.parametrize("change", [
    dict(down_block_types=["AttnDownEncoderBlock2D"]),
    dict(up_block_types=["AttnUpDecoderBlock2D"]),
    dict(shift_factor=0.1),
    dict(latents_mean=[0.0, 0.0]),
    dict(latents_std=[1.0, 1.0]),
    dict(act_fn="gelu"),
    dict(block_out_channels=[16, 32]),  # two levels but one block type
    dict(norm_num_groups=3),
    dict(some_future_option=True),
    dict(_class_name="AutoencoderTiny"),
])
def test_unsupported_configs_raise(change, tmp_path):
    directory = tmp_path / "vae"
    save_random(RANDOM_CONFIGS["one-level-two-layers-attention"], directory)
    config = json.loads((directory / "config.json").read_text())
    config.update(change)
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(Unsupported):
        LeanAutoencoderKL.from_pretrained(directory)


def test_weights_that_do_not_fit_raise(tmp_path):
    from safetensors.torch import load_file, save_file

    directory = tmp_path / "vae"
    save_random(RANDOM_CONFIGS["one-level-two-layers-attention"], directory)
    path = directory / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    state.pop("decoder.conv_out.bias")
    save_file(state, str(path))
    with pytest.raises(Unsupported, match="missing"):
        LeanAutoencoderKL.from_pretrained(directory)
    with pytest.raises(Unsupported):
        LeanAutoencoderKL.from_pretrained(tmp_path / "nowhere")


def test_loading_and_decoding_does_not_import_diffusers():
    code = (
        "import sys, torch\n"
        "from melfusion.lean.vae import LeanAutoencoderKL\n"
        f"vae = LeanAutoencoderKL.from_pretrained({str(DEFAULT / 'audio_vae')!r})\n"
        "with torch.no_grad():\n"
        "    z = vae.encode(torch.randn(1, 1, 64, 32)).latent_dist.mean\n"
        "    y = vae.decode(z).sample\n"
        "assert y.shape == (1, 1, 64, 32), y.shape\n"
        "print(sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
