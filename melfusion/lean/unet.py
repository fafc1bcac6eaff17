"""The conditional UNet of melfusion's two diffusion models, on plain torch.

It reads a folder saved by diffusers' `UNet2DConditionModel` (its config.json and weights, the
same weight names) and computes the same function, for the configurations melfusion builds:
positional timestep embedding, `CrossAttnDownBlock2D` / `DownBlock2D` encoder blocks, a
`UNetMidBlock2DCrossAttn` middle, `CrossAttnUpBlock2D` / `UpBlock2D` decoder blocks, GEGLU
transformer blocks (self-attention, or cross-attention only where `only_cross_attention` says
so, then cross-attention to the caption). Anything else is `Unsupported`.

Attention layers delegate to processors as diffusers' do, under the same names
(`up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor`), with the same attributes
(`to_q`, `to_k`, `to_v`, `to_out`, `heads`), so the visual synapse and the T2I key/value capture
install themselves here exactly as in the library's UNet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from melfusion.attention import attend, bias_shape, finish, prepare_inputs
from melfusion.lean import (Config, Unsupported, assign_weights, build_on_meta, defer_weights, read_safetensors,
                            require)

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")
MASK_BIAS = -10000.0  # what a masked caption token adds to its attention logits


class DefaultProcessor:
    """Plain scaled dot-product attention (what a layer does without a melfusion processor)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        hidden_states, context, restore = prepare_inputs(attn, hidden_states, encoder_hidden_states, temb)
        out = attend(attn, attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context), bias_shape(attention_mask))
        return finish(attn, out, residual, restore)


class Attention(nn.Module):
    # The attributes melfusion's processors read (diffusers' Attention has them too).
    spatial_norm = group_norm = norm_q = norm_k = None
    norm_cross = False
    residual_connection = False
    rescale_output_factor = 1.0

    def __init__(self, query_dim: int, heads: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Identity()])
        self.processor = DefaultProcessor()

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None):
        return self.processor(self, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask)


class GEGLUFeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([_Proj(dim, 2 * inner), nn.Identity(), nn.Linear(inner, dim)])

    def forward(self, x):
        hidden, gate = self.net[0].proj(x).chunk(2, dim=-1)
        return self.net[2](hidden * F.gelu(gate))


class _Proj(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int, only_cross_attention: bool):
        super().__init__()
        self.only_cross_attention = only_cross_attention
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn1 = Attention(dim, heads, head_dim, context_dim if only_cross_attention else None)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.norm3 = nn.LayerNorm(dim, eps=1e-5)
        self.ff = GEGLUFeedForward(dim)

    def forward(self, x, context, context_bias):
        # A cross-attention-only first layer reads the caption unmasked, as the library's does.
        x = self.attn1(self.norm1(x), context if self.only_cross_attention else None) + x
        x = self.attn2(self.norm2(x), context, context_bias) + x
        return self.ff(self.norm3(x)) + x


class Transformer2D(nn.Module):
    def __init__(self, channels: int, heads: int, layers: int, context_dim: int, groups: int,
                 linear_projection: bool, only_cross_attention: bool):
        super().__init__()
        head_dim = channels // heads
        inner = heads * head_dim
        self.linear_projection = linear_projection
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if linear_projection else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, heads, head_dim, context_dim, only_cross_attention) for _ in range(layers))
        self.proj_out = nn.Linear(inner, channels) if linear_projection else nn.Conv2d(inner, channels, 1)

    def forward(self, x, context, context_bias):
        b, c, h, w = x.shape
        residual = x
        x = self.norm(x)
        if not self.linear_projection:
            x = self.proj_in(x)
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1)
        if self.linear_projection:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context, context_bias)
        if self.linear_projection:
            x = self.proj_out(x)
        x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        if not self.linear_projection:
            x = self.proj_out(x)
        return x + residual


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, temb: int, groups: int, eps: float, out_scale: float = 1.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=eps)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=eps)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None
        self.out_scale = out_scale

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.out_scale if self.out_scale != 1.0 else x + h


class _Conv(nn.Module):
    def __init__(self, channels: int, stride: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=padding)


class Block(nn.Module):
    """One encoder or decoder block: resnets, each followed by a transformer when it attends,
    then a down- or upsampler."""

    def __init__(self, resnets, attentions, down: bool, sampler: nn.Module | None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        if attentions is not None:
            self.attentions = nn.ModuleList(attentions)
        self.down = down
        if sampler is not None:
            setattr(self, "downsamplers" if down else "upsamplers", nn.ModuleList([sampler]))

    @property
    def sampler(self):
        return getattr(self, "downsamplers" if self.down else "upsamplers", [None])[0]

    def forward_down(self, x, temb, context, context_bias):
        states = []
        attentions = getattr(self, "attentions", None)
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if attentions is not None:
                x = attentions[i](x, context, context_bias)
            states.append(x)
        if self.sampler is not None:
            x = self.sampler.conv(x)
            states.append(x)
        return x, states

    def forward_up(self, x, skips, temb, context, context_bias, size=None):
        attentions = getattr(self, "attentions", None)
        for i, resnet in enumerate(self.resnets):
            x = resnet(torch.cat([x, skips.pop()], dim=1), temb)
            if attentions is not None:
                x = attentions[i](x, context, context_bias)
        if self.sampler is not None:
            x = F.interpolate(x, size=size, mode="nearest") if size is not None else \
                F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = self.sampler.conv(x)
        return x


class MidBlock(nn.Module):
    def __init__(self, resnets, attentions):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions)

    def forward(self, x, temb, context, context_bias):
        x = self.resnets[0](x, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attn(x, context, context_bias), temb)
        return x


class _TimeEmbedding(nn.Module):
    def __init__(self, c_in: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(c_in, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


@dataclass
class UNetOutput:
    sample: torch.Tensor


def timestep_embedding(t: torch.Tensor, dim: int, flip_sin_to_cos: bool, shift: float, max_period: float = 10000.0):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / (half - shift))
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)] if flip_sin_to_cos else [torch.sin(args), torch.cos(args)], -1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _per_block(value, n: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise Unsupported(f"{what} has {len(value)} entries for {n} blocks")
        return list(value)
    return [value] * n


class LeanUNet(nn.Module):
    """`UNet2DConditionModel`'s function for melfusion's configurations; `.config` is the saved one."""

    def __init__(self, config: dict):
        super().__init__()
        cfg = self.config = Config(config)
        _check(cfg)
        boc = list(cfg["block_out_channels"])
        n = len(boc)
        down_types, up_types = list(cfg["down_block_types"]), list(cfg["up_block_types"])
        if len(down_types) != n or len(up_types) != n:
            raise Unsupported("block type lists do not match block_out_channels")
        heads = _per_block(cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8), n, "attention heads")
        only_cross = _per_block(cfg.get("only_cross_attention", False), n, "only_cross_attention")
        layers_tf = _per_block(cfg.get("transformer_layers_per_block", 1), n, "transformer_layers_per_block")
        if any(isinstance(x, (list, tuple)) for x in layers_tf):
            raise Unsupported("per-layer transformer depths")
        per_block = _per_block(cfg.get("layers_per_block", 2), n, "layers_per_block")
        groups, eps = int(cfg.get("norm_num_groups", 32)), float(cfg.get("norm_eps", 1e-5))
        ctx = int(cfg["cross_attention_dim"]) if not isinstance(cfg["cross_attention_dim"], (list, tuple)) else None
        if ctx is None:
            raise Unsupported("per-block cross_attention_dim")
        linear = bool(cfg.get("use_linear_projection", False))
        temb = boc[0] * 4
        self.flip_sin_to_cos, self.freq_shift = bool(cfg.get("flip_sin_to_cos", True)), float(cfg.get("freq_shift", 0))
        self.conv_in = nn.Conv2d(int(cfg.get("in_channels", 4)), boc[0], 3, padding=1)
        self.time_embedding = _TimeEmbedding(boc[0], temb)
        # A class label added to the timestep embedding (melfusion's key: melfusion.music.keys).
        n_classes = cfg.get("num_class_embeds")
        self.class_embedding = nn.Embedding(int(n_classes), temb) if n_classes else None

        def transformer(ch, i, cross_only=False):
            return Transformer2D(ch, int(heads[i]), int(layers_tf[i]), ctx, groups, linear, cross_only)

        pad = int(cfg.get("downsample_padding", 1))
        self.down_blocks = nn.ModuleList()
        ch = boc[0]
        for i, kind in enumerate(down_types):
            out, final = boc[i], i == n - 1
            resnets = [ResnetBlock(ch if j == 0 else out, out, temb, groups, eps) for j in range(per_block[i])]
            attns = [transformer(out, i, bool(only_cross[i])) for _ in range(per_block[i])] \
                if kind == "CrossAttnDownBlock2D" else None
            self.down_blocks.append(Block(resnets, attns, True, None if final else _Conv(out, 2, pad)))
            ch = out
        mid_scale = float(cfg.get("mid_block_scale_factor", 1.0))
        mid_layers = 1
        self.mid_block = MidBlock([ResnetBlock(boc[-1], boc[-1], temb, groups, eps, mid_scale)
                                   for _ in range(mid_layers + 1)],
                                  [transformer(boc[-1], n - 1) for _ in range(mid_layers)])
        rev = boc[::-1]
        rev_heads, rev_cross, rev_layers = heads[::-1], only_cross[::-1], per_block[::-1]
        rev_tf = layers_tf[::-1]
        self.up_blocks = nn.ModuleList()
        prev = boc[-1]
        for i, kind in enumerate(up_types):
            out, final = rev[i], i == n - 1
            skip_in = rev[min(i + 1, n - 1)]
            count = rev_layers[i] + 1
            resnets = []
            for j in range(count):
                skip = skip_in if j == count - 1 else out
                resnets.append(ResnetBlock((prev if j == 0 else out) + skip, out, temb, groups, eps))
            attns = [Transformer2D(out, int(rev_heads[i]), int(rev_tf[i]), ctx, groups, linear, bool(rev_cross[i]))
                     for _ in range(count)] if kind == "CrossAttnUpBlock2D" else None
            self.up_blocks.append(Block(resnets, attns, False, None if final else _Conv(out, 1, 1)))
            prev = out
        self.conv_norm_out = nn.GroupNorm(groups, boc[0], eps=eps)
        self.conv_out = nn.Conv2d(boc[0], int(cfg.get("out_channels", 4)), 3, padding=1)

    # -- processors, under the library's names ---------------------------------------------------
    @property
    def attn_processors(self) -> dict:
        return {f"{name}.processor": m.processor for name, m in self.named_modules() if isinstance(m, Attention)}

    def set_attn_processor(self, processors) -> None:
        layers = {f"{name}.processor": m for name, m in self.named_modules() if isinstance(m, Attention)}
        if not isinstance(processors, dict):
            processors = {name: processors for name in layers}
        unknown = sorted(set(processors) - set(layers))
        if unknown:
            raise ValueError(f"no attention layer {unknown[0]} in this UNet")
        for name, proc in processors.items():
            layers[name].processor = proc

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    # -- the function ----------------------------------------------------------------------------
    def forward(self, sample, timestep, encoder_hidden_states, encoder_attention_mask=None, return_dict=True,
                class_labels=None):
        b = sample.shape[0]
        t = timestep if torch.is_tensor(timestep) else torch.tensor(timestep)
        t = t.reshape(-1).to(sample.device).expand(b) if t.numel() == 1 else t.to(sample.device)
        temb = self.time_embedding(timestep_embedding(t, self.conv_in.out_channels, self.flip_sin_to_cos,
                                                      self.freq_shift).to(sample.dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels should be provided when num_class_embeds > 0")
            temb = temb + self.class_embedding(class_labels.reshape(-1).to(sample.device)).to(temb.dtype)
        bias = None
        if encoder_attention_mask is not None:
            bias = ((1 - encoder_attention_mask.to(sample.dtype)) * MASK_BIAS)[:, None]
        context = encoder_hidden_states
        # Sizes of each decoder level, when the input does not halve evenly all the way down.
        levels = len(self.up_blocks) - 1
        uneven = any(s % (2 ** levels) for s in sample.shape[-2:])
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, states = block.forward_down(x, temb, context, bias)
            skips.extend(states)
        x = self.mid_block(x, temb, context, bias)
        for i, block in enumerate(self.up_blocks):
            mine = skips[len(skips) - len(block.resnets):]
            del skips[len(skips) - len(block.resnets):]
            size = skips[-1].shape[2:] if uneven and block.sampler is not None and skips else None
            x = block.forward_up(x, mine, temb, context, bias, size)
        x = self.conv_out(F.silu(self.conv_norm_out(x)))
        return UNetOutput(x) if return_dict else (x,)

    @classmethod
    def from_pretrained(cls, directory: str | Path, defer: bool = False) -> "LeanUNet":
        """`defer`: the weights are read on the first forward pass (`melfusion.lean.defer_weights`)."""
        directory = Path(directory)
        config = Config.read(directory / "config.json")
        model = build_on_meta(lambda: cls(config))
        if defer:
            return defer_weights(model, directory / WEIGHTS_NAME, f"UNet in {directory}")
        return assign_weights(model, read_safetensors(directory / WEIGHTS_NAME), f"UNet in {directory}")


def _check(cfg: Config) -> None:
    require(cfg, "_class_name", ("UNet2DConditionModel",), "UNet2DConditionModel")
    for key, allowed, default in (
            ("act_fn", ("silu",), "silu"), ("time_embedding_type", ("positional",), "positional"),
            ("mid_block_type", ("UNetMidBlock2DCrossAttn",), "UNetMidBlock2DCrossAttn"),
            ("resnet_time_scale_shift", ("default",), "default"), ("attention_type", ("default",), "default"),
            ("center_input_sample", (False,), False), ("dual_cross_attention", (False,), False),
            ("upcast_attention", (False, None), False), ("conv_in_kernel", (3,), 3), ("conv_out_kernel", (3,), 3),
            ("resnet_out_scale_factor", (1.0, 1), 1.0), ("resnet_skip_time_act", (False,), False),
            ("reverse_transformer_layers_per_block", (None,), None), ("downsample_padding", (1,), 1),
            ("use_linear_projection", (False, True), False)):
        require(cfg, key, allowed, default)
    require(cfg, "class_embeddings_concat", (False,), False)
    for key in ("addition_embed_type", "class_embed_type", "time_cond_proj_dim",
                "timestep_post_act", "time_embedding_act_fn", "time_embedding_dim", "encoder_hid_dim",
                "encoder_hid_dim_type", "cross_attention_norm", "projection_class_embeddings_input_dim"):
        require(cfg, key, (None,), None)
    for kind in cfg.get("down_block_types", []):
        if kind not in DOWN_BLOCKS:
            raise Unsupported(f"down block {kind}")
    for kind in cfg.get("up_block_types", []):
        if kind not in UP_BLOCKS:
            raise Unsupported(f"up block {kind}")
    if cfg.get("num_attention_heads") is not None:
        raise Unsupported("num_attention_heads (diffusers reads attention_head_dim as the head count)")
