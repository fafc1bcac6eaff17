"""The visual synapse: image keys and values from a frozen T2I model, blended into the music
UNet's decoder cross-attention (MeLFusion, Sec. 3 and appendix D).

In each chosen decoder cross-attention layer of the music UNet,

    K = a * Pk(K_img) + (1 - a) * K_text        V = a * Pv(V_img) + (1 - a) * V_text

where K_img, V_img are the self-attention keys and values of the paired T2I decoder layer
(already pooled to the text's token count by the capture), Pk, Pv are learned linear maps to
the music layer's inner width, and `a` is one scalar per layer in [0, 1], learned (through a
sigmoid) or fixed. `a = 0` is the text-only model; `a = 1` ignores the caption in that layer.

Text padding: the text-only layer masks padded caption tokens. Blended, a padded slot holds
only image content, so its mask is softened to `log((1 - a) * m + a)` for mask `m` in {0, 1}:
exactly the text mask at `a = 0`, no mask at `a = 1`.

`image_present` (batch,) multiplies `a` per sample: 0 drops the image for that sample (used
for classifier-free guidance and condition dropout), which reduces the layer to text only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from melfusion.attention import attend, bias_shape, finish, prepare_inputs
from melfusion.errors import MelFusionError
from melfusion.weights import load_module, save_module

CONFIG_NAME = "synapse_config.json"
WEIGHTS_NAME = "synapse.safetensors"
MASK_FLOOR = -10000.0  # the bias diffusers uses for a masked key


@dataclass
class SynapseConfig:
    # Music UNet decoder blocks that get the synapse, counted 1.. among decoder blocks with
    # cross-attention, lowest resolution first. None: all of them (the paper's best, Table 4).
    blocks: list[int] | None = None
    # "learned" (the paper's choice, Table 7) or a fixed value in [0, 1].
    alpha: str | float = "learned"
    alpha_init: float = 0.5
    enabled: bool = True
    # Filled in when the synapse is built: the music layers it sits in and their T2I partners.
    layers: list[str] = field(default_factory=list)
    partners: list[str] = field(default_factory=list)
    music_dims: list[int] = field(default_factory=list)
    image_dims: list[int] = field(default_factory=list)

    def validate(self):
        if isinstance(self.alpha, str):
            if self.alpha != "learned":
                raise MelFusionError(f"synapse alpha must be 'learned' or a number in [0, 1], not {self.alpha!r}")
        elif not 0.0 <= float(self.alpha) <= 1.0:
            raise MelFusionError(f"synapse alpha must lie in [0, 1], got {self.alpha}")
        if not 0.0 < self.alpha_init < 1.0:
            raise MelFusionError(f"synapse alpha_init must lie strictly between 0 and 1, got {self.alpha_init}")


class SynapseLayer(torch.nn.Module):
    """The learned part of one blended layer: the image projections and the layer's alpha."""

    def __init__(self, image_dim: int, music_dim: int, alpha: str | float, alpha_init: float):
        super().__init__()
        self.to_k_image = torch.nn.Linear(image_dim, music_dim, bias=False)
        self.to_v_image = torch.nn.Linear(image_dim, music_dim, bias=False)
        if alpha == "learned":
            self.alpha_logit = torch.nn.Parameter(torch.tensor(math.log(alpha_init / (1 - alpha_init))))
        else:
            self.register_buffer("fixed_alpha", torch.tensor(float(alpha)))

    @property
    def alpha(self) -> torch.Tensor:
        if hasattr(self, "alpha_logit"):
            return torch.sigmoid(self.alpha_logit)
        return self.fixed_alpha


class SynapseProcessor:
    """Attention processor for one music decoder cross-attention layer (holds no weights itself)."""

    def __init__(self, synapse: "VisualSynapse", index: int):
        self.synapse, self.index = synapse, index

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        hidden_states, context, restore = prepare_inputs(attn, hidden_states, encoder_hidden_states, temb)
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        bias = bias_shape(attention_mask)
        image = self.synapse.image_kv
        if image is not None:
            layer = self.synapse.layers[self.index]
            k_img, v_img = image[self.index]
            a = layer.alpha.to(key.dtype) * self.synapse.image_present.to(key.dtype)[:, None, None]
            key = a * layer.to_k_image(k_img.to(key.dtype)) + (1 - a) * key
            value = a * layer.to_v_image(v_img.to(value.dtype)) + (1 - a) * value
            if bias is not None:
                # log((1 - a) * m + a): 0 where the caption has a token, log(a) where it is padding.
                # Written with `where` so that a = 0 (image dropped) gives the text mask exactly
                # and no infinite gradient.
                keep = bias > MASK_FLOOR / 2  # (batch, 1, 1, keys)
                a4 = a[:, :, :, None]
                padded = torch.where(a4 > 0, torch.log(a4.clamp(min=1e-12)), torch.full_like(a4, MASK_FLOOR))
                bias = torch.where(keep, torch.zeros_like(padded), padded)
        out = attend(attn, query, key, value, bias)
        return finish(attn, out, residual, restore)


def cross_attention_layers(unet) -> list[str]:
    """The music UNet's decoder cross-attention processor names, lowest resolution first."""
    names = [n for n in unet.attn_processors if n.startswith("up_blocks.") and n.endswith("attn2.processor")]
    return sorted(names, key=lambda n: tuple(int(p) for p in n.split(".") if p.isdigit()))


def _block_of(name: str) -> int:
    return int(name.split(".")[1])


def pair_layers(music_layers: list[str], image_layers: list[str]) -> list[str]:
    """Pair music layers with T2I layers by depth; proportionally when the counts differ."""
    n_m, n_i = len(music_layers), len(image_layers)
    if n_i == 0:
        raise MelFusionError("the text-to-image UNet has no decoder self-attention layers to read")
    return [image_layers[min(n_i - 1, (i * n_i) // n_m)] for i in range(n_m)]


class VisualSynapse(torch.nn.Module):
    def __init__(self, config: SynapseConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.layers = torch.nn.ModuleList(
            SynapseLayer(i, m, config.alpha, config.alpha_init) for i, m in zip(config.image_dims, config.music_dims))
        # Per-call context, set by `condition` around a music UNet forward pass.
        self.image_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.image_present: torch.Tensor | None = None

    @classmethod
    def build(cls, config: SynapseConfig, music_unet, t2i_unet) -> "VisualSynapse":
        """Choose the music layers, pair them with T2I decoder layers, size the projections."""
        from melfusion.t2i.capture import decoder_self_attention_names

        all_layers = cross_attention_layers(music_unet)
        blocks = sorted({_block_of(n) for n in all_layers})
        chosen = blocks if config.blocks is None else []
        for b in config.blocks or []:
            if not 1 <= b <= len(blocks):
                raise MelFusionError(f"synapse block {b} does not exist: the music decoder has {len(blocks)} "
                                     "blocks with cross-attention (numbered from 1, lowest resolution first)")
            chosen.append(blocks[b - 1])
        music_layers = [n for n in all_layers if _block_of(n) in chosen]
        image_layers = decoder_self_attention_names(t2i_unet)
        partners = pair_layers(music_layers, image_layers)
        music_modules = dict(music_unet.named_modules())
        t2i_modules = dict(t2i_unet.named_modules())
        config.layers, config.partners = music_layers, partners
        config.music_dims = [music_modules[n.removesuffix(".processor")].to_k.out_features for n in music_layers]
        config.image_dims = [t2i_modules[n.removesuffix(".processor")].to_k.out_features for n in partners]
        return cls(config)

    def attach(self, music_unet) -> None:
        """Install the synapse processors in the music UNet (others keep their processors)."""
        processors = dict(music_unet.attn_processors)
        for i, name in enumerate(self.config.layers):
            if name not in processors:
                raise MelFusionError(f"synapse layer {name} is not in this music UNet")
            processors[name] = SynapseProcessor(self, i)
        music_unet.set_attn_processor(processors)

    def condition(self, image_kv, image_present: torch.Tensor | None = None):
        """Context manager: the music UNet's forward passes inside it see these image features.

        `image_kv`: per synapse layer `(keys, values)`, `(batch, tokens, image_dim)`, already
        ordered like `config.partners`. `None` runs the layers text-only.
        """
        synapse = self

        class _Ctx:
            def __enter__(self_):
                synapse.image_kv = image_kv if synapse.config.enabled else None
                if image_kv is not None:
                    b = image_kv[0][0].shape[0]
                    synapse.image_present = (torch.ones(b) if image_present is None else image_present.float()).to(
                        image_kv[0][0].device)
                return synapse

            def __exit__(self_, *exc):
                synapse.image_kv, synapse.image_present = None, None

        return _Ctx()

    def alphas(self) -> list[float]:
        return [float(layer.alpha.detach()) for layer in self.layers]

    def save_pretrained(self, directory: str | Path) -> None:
        save_module(self, self.config, directory, CONFIG_NAME, WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "VisualSynapse":
        return load_module(cls, SynapseConfig, directory, CONFIG_NAME, WEIGHTS_NAME, "visual synapse")
