"""diffusers' `AutoencoderKL` on plain torch, for the configs melfusion writes.

The autoencoder is the one of Stable Diffusion and AudioLDM: an encoder of `DownEncoderBlock2D`s
(ResNet blocks, a strided conv between levels), a mid-block of ResNet -> attention -> ResNet, a
1x1 "quant" conv to the mean and log-variance of a diagonal Gaussian; a decoder that mirrors it
with `UpDecoderBlock2D`s (one ResNet block more per level, nearest-neighbour upsampling and a
conv between levels). Module names follow diffusers' exactly, so the saved
`diffusion_pytorch_model.safetensors` loads by name with nothing left over.

Covered: `DownEncoderBlock2D` / `UpDecoderBlock2D`, any `block_out_channels`,
`layers_per_block`, `norm_num_groups`, `latent_channels`, `in_channels` / `out_channels`,
`act_fn` silu (alias swish), `mid_block_add_attention`, `use_quant_conv` / `use_post_quant_conv`,
`scaling_factor`. `force_upcast` and `sample_size` are accepted and have no effect here (they
matter only to pipelines' dtype handling and to tiling, which this module does not do). Anything
else (other block types, `shift_factor`, `latents_mean` / `latents_std`, a key this module does not
know) raises `Unsupported`, and the loader falls back to diffusers.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from melfusion.lean import Config, Unsupported, assign_weights, build_on_meta, read_safetensors, require

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"

# diffusers' defaults for AutoencoderKL's config (0.42.1): a key missing from config.json means this.
DEFAULTS = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"],
    "block_out_channels": [64],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 32,
    "scaling_factor": 0.18215,
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
    "force_upcast": True,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}

EPS = 1e-6  # every norm of diffusers' VAE encoder and decoder


# --------------------------------------------------------------------------------------- blocks

class ResnetBlock2D(nn.Module):
    """norm -> silu -> conv -> norm -> silu -> conv, plus the input (1x1-projected when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=EPS, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=EPS, affine=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return x + h  # output_scale_factor is 1 throughout the VAE


class Downsample2D(nn.Module):
    """Pad right and bottom by one, then a stride-2 3x3 conv (diffusers' `padding=0` downsampler)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample2D(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] >= 64:  # as diffusers: upsample_nearest_nhwc fails on large batches
            x = x.contiguous()
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Attention(nn.Module):
    """The VAE mid-block's self-attention over the H*W positions: group norm, q/k/v projections,
    scaled dot-product attention, output projection, plus the input (rescale factor 1).

    diffusers builds it with `heads = channels // attention_head_dim` and
    `attention_head_dim = channels`, so it has a single head as wide as the channels.
    """

    def __init__(self, channels: int, groups: int, head_dim: int | None = None):
        super().__init__()
        head_dim = channels if head_dim is None else head_dim
        self.heads = channels // head_dim
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS, affine=True)
        self.to_q = nn.Linear(channels, channels, bias=True)
        self.to_k = nn.Linear(channels, channels, bias=True)
        self.to_v = nn.Linear(channels, channels, bias=True)
        # diffusers' to_out is [Linear, Dropout]; the dropout has no weights and p = 0.
        self.to_out = nn.ModuleList([nn.Linear(channels, channels, bias=True)])
        self.rescale_output_factor = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        b, c, h, w = x.shape
        seq = self.group_norm(x.view(b, c, h * w)).transpose(1, 2)  # (b, hw, c)
        q, k, v = self.to_q(seq), self.to_k(seq), self.to_v(seq)
        head_dim = c // self.heads
        q, k, v = (t.view(b, -1, self.heads, head_dim).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(b, -1, self.heads * head_dim).to(q.dtype)
        out = self.to_out[0](out)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return (out + residual) / self.rescale_output_factor


class MidBlock2D(nn.Module):
    """ResNet, then (attention, ResNet); the attention is left out with `mid_block_add_attention=False`."""

    def __init__(self, channels: int, groups: int, add_attention: bool):
        super().__init__()
        # Registered in diffusers' order (attentions first), so state_dict() lists the same keys in the same order.
        self.attentions = nn.ModuleList([Attention(channels, groups)]) if add_attention else None
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, groups) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class DownEncoderBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(num_layers)])
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels)]) if add_downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpDecoderBlock2D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(num_layers)])
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Encoder(nn.Module):
    def __init__(self, in_channels: int, latent_channels: int, block_out_channels, layers_per_block: int,
                 groups: int, add_attention: bool):
        super().__init__()
        chans = list(block_out_channels)
        self.conv_in = nn.Conv2d(in_channels, chans[0], 3, stride=1, padding=1)
        self.down_blocks = nn.ModuleList()
        out_ch = chans[0]
        for i, ch in enumerate(chans):
            in_ch, out_ch = out_ch, ch
            self.down_blocks.append(DownEncoderBlock2D(in_ch, out_ch, layers_per_block, groups,
                                                       add_downsample=i < len(chans) - 1))
        self.mid_block = MidBlock2D(chans[-1], groups, add_attention)
        self.conv_norm_out = nn.GroupNorm(groups, chans[-1], eps=EPS)
        self.conv_out = nn.Conv2d(chans[-1], 2 * latent_channels, 3, padding=1)  # double_z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, latent_channels: int, out_channels: int, block_out_channels, layers_per_block: int,
                 groups: int, add_attention: bool):
        super().__init__()
        rev = list(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(latent_channels, rev[0], 3, stride=1, padding=1)
        self.up_blocks = nn.ModuleList()  # registered before the mid-block, as in diffusers
        self.mid_block = MidBlock2D(rev[0], groups, add_attention)
        out_ch = rev[0]
        for i, ch in enumerate(rev):
            in_ch, out_ch = out_ch, ch
            self.up_blocks.append(UpDecoderBlock2D(in_ch, out_ch, layers_per_block + 1, groups,
                                                   add_upsample=i < len(rev) - 1))
        self.conv_norm_out = nn.GroupNorm(groups, rev[-1], eps=EPS)
        self.conv_out = nn.Conv2d(rev[-1], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


# --------------------------------------------------------------------------------------- outputs

class DiagonalGaussianDistribution:
    """The encoder's posterior, as diffusers computes it: moments split in halves along channels,
    log-variance clamped to [-30, 20]."""

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if deterministic:
            self.var = self.std = torch.zeros_like(self.mean)

    def sample(self, generator: torch.Generator | list | None = None) -> torch.Tensor:
        """mean + std * N(0, 1), drawn as diffusers' `randn_tensor` draws it (the same generator gives
        the same sample): on the generator's device when that is the CPU, one draw per batch item for
        a list of generators."""
        noise = _randn(self.mean.shape, generator, self.parameters.device, self.parameters.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> torch.Tensor:
        if self.deterministic:
            return torch.Tensor([0.0])
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])
        return 0.5 * torch.sum((self.mean - other.mean).pow(2) / other.var + self.var / other.var
                               - 1.0 - self.logvar + other.logvar, dim=[1, 2, 3])


def _randn(shape, generator, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    rand_device = device
    if generator is not None:
        gen_type = (generator[0] if isinstance(generator, list) else generator).device.type
        if gen_type != device.type and gen_type == "cpu":
            rand_device = torch.device("cpu")
        elif gen_type != device.type and gen_type == "cuda":
            raise ValueError(f"Cannot generate a {device} tensor from a generator of type {gen_type}.")
    if isinstance(generator, list) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, list):
        one = (1,) + tuple(shape[1:])
        return torch.cat([torch.randn(one, generator=g, device=rand_device, dtype=dtype)
                          for g in generator[: shape[0]]], dim=0).to(device)
    return torch.randn(tuple(shape), generator=generator, device=rand_device, dtype=dtype).to(device)


class EncoderOutput:
    """What `encode` returns: `.latent_dist`, as diffusers' `AutoencoderKLOutput`."""

    def __init__(self, latent_dist: DiagonalGaussianDistribution):
        self.latent_dist = latent_dist

    def __getitem__(self, index):
        return (self.latent_dist,)[index]


class DecoderOutput:
    """What `decode` returns: `.sample`, as diffusers' `DecoderOutput`."""

    def __init__(self, sample: torch.Tensor):
        self.sample = sample

    def __getitem__(self, index):
        return (self.sample,)[index]


# --------------------------------------------------------------------------------------- model

def check_config(saved: dict) -> Config:
    """The full config (diffusers' defaults under the saved keys), or `Unsupported`."""
    config = Config(DEFAULTS)
    config.update(saved)
    require(config, "_class_name", ("AutoencoderKL",), default="AutoencoderKL")
    unknown = sorted(k for k in saved if not k.startswith("_") and k not in DEFAULTS)
    if unknown:
        raise Unsupported(f"AutoencoderKL config keys {unknown}")
    require(config, "act_fn", ("silu", "swish"))
    for key in ("shift_factor", "latents_mean", "latents_std"):
        require(config, key, (None,))
    for key in ("use_quant_conv", "use_post_quant_conv", "mid_block_add_attention", "force_upcast"):
        require(config, key, (True, False))
    chans = config.block_out_channels
    if not isinstance(chans, (list, tuple)) or not chans or not all(isinstance(c, int) and c > 0 for c in chans):
        raise Unsupported(f"block_out_channels = {chans!r}")
    down, up = config.down_block_types, config.up_block_types
    if not isinstance(down, (list, tuple)) or any(t != "DownEncoderBlock2D" for t in down) or len(down) != len(chans):
        raise Unsupported(f"down_block_types = {down!r}")
    if not isinstance(up, (list, tuple)) or any(t != "UpDecoderBlock2D" for t in up) or len(up) != len(chans):
        raise Unsupported(f"up_block_types = {up!r}")
    for key in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups"):
        value = config[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise Unsupported(f"{key} = {value!r}")
    groups = config.norm_num_groups
    if any(c % groups for c in chans):
        raise Unsupported(f"norm_num_groups = {groups} does not divide block_out_channels {list(chans)}")
    if not isinstance(config.scaling_factor, (int, float)) or isinstance(config.scaling_factor, bool):
        raise Unsupported(f"scaling_factor = {config.scaling_factor!r}")
    return config


def _rename_deprecated_attention(state: dict) -> dict:
    """Checkpoints from before diffusers renamed the VAE attention (query/key/value/proj_attn)."""
    renames = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}
    out = {}
    for name, value in state.items():
        if ".mid_block.attentions." in name:
            for old, new in renames.items():
                if old in name:
                    name = name.replace(old, new)
                    break
        out[name] = value
    return out


class LeanAutoencoderKL(nn.Module):
    """`AutoencoderKL` without diffusers: same config, same weight names, same numbers."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = check_config(config)
        c = self.config
        self.encoder = Encoder(c.in_channels, c.latent_channels, c.block_out_channels, c.layers_per_block,
                               c.norm_num_groups, c.mid_block_add_attention)
        self.decoder = Decoder(c.latent_channels, c.out_channels, c.block_out_channels, c.layers_per_block,
                               c.norm_num_groups, c.mid_block_add_attention)
        lat = c.latent_channels
        self.quant_conv = nn.Conv2d(2 * lat, 2 * lat, 1) if c.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(lat, lat, 1) if c.use_post_quant_conv else None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        posterior = DiagonalGaussianDistribution(moments)
        return EncoderOutput(posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        sample = self.decoder(z)
        return DecoderOutput(sample) if return_dict else (sample,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None):
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)

    @classmethod
    def from_config(cls, config: dict) -> "LeanAutoencoderKL":
        """Randomly initialised (for tests and training); loading uses `from_pretrained`."""
        return cls(config)

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype = torch.float32) -> "LeanAutoencoderKL":
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not config_path.is_file():
            raise Unsupported(f"no {CONFIG_NAME} in {directory}")
        if not weights_path.is_file():
            raise Unsupported(f"no {WEIGHTS_NAME} in {directory}")
        saved = Config.read(config_path)
        check_config(saved)  # Unsupported before anything is built
        model = build_on_meta(lambda: cls(saved))
        state = _rename_deprecated_attention(read_safetensors(weights_path))
        return assign_weights(model, state, f"AutoencoderKL in {directory}", dtype=dtype)

    def save_pretrained(self, directory: str | Path) -> None:
        """config.json and diffusion_pytorch_model.safetensors, readable by diffusers and by this class."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = dict(self.config)
        config.setdefault("_class_name", "AutoencoderKL")
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
