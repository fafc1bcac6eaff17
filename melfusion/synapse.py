"""The visual synapse: image keys and values from a frozen T2I model, blended into the music
UNet's decoder cross-attention (MeLFusion, Sec. 3 and appendix D).

In each chosen decoder cross-attention layer of the music UNet,

    K = a * Pk(K_img) + (1 - a) * K_text        V = a * Pv(V_img) + (1 - a) * V_text

where K_img, V_img are the self-attention keys and values of the paired T2I decoder layer
(already pooled to the text's token count by the capture), Pk, Pv are learned linear maps to
the music layer's inner width, and `a` is one scalar per layer in [0, 1], learned (through a
sigmoid) or fixed. `a = 0` is the text-only model; `a = 1` ignores the caption in that layer.

Image statistics: the T2I features carry a large part shared by every picture (per inverted
step, token and channel). `standardize` subtracts the training set's mean and divides by its
spread (`set_statistics`, stored with the weights), so what reaches Pk, Pv is what tells one
picture from another; the all-zero feature is then the average picture.

An absent image (classifier-free guidance's unconditional branch, image dropout, a text-only
model) is the null image: all-zero features, with `a` left as it is, so the caption keeps its
weight (1 - a) whether or not there is a picture and an image guidance term adds the picture
and nothing else (`absent = "null-image"`). Models saved before this (no `absent` in their
config) read an absent image as `a = 0` (`"alpha-zero"`), as they were trained.

`zero_projections()` starts the image path neutral: a synapse added to a trained text-only
model (run on the null image) then leaves its output unchanged until training moves it.

The global path (beyond the paper; off unless `global_dim` is set): the same standardised image
features, averaged over tokens and concatenated over the synapse's layers, through one linear map
G (zero at the start) into the music UNet's timestep embedding, the vector every block reads and
where a class label enters. Diagnostic J (docs/model-card.md) found the UNet follows a mode handed
to it there; the cross-attention path carries it weakly. An absent image adds nothing.

Text padding: the text-only layer masks padded caption tokens. Blended, a padded slot holds
image content, so its mask is softened to `log((1 - a) * m + a)` for mask `m` in {0, 1}:
exactly the text mask at `a = 0`, no mask at `a = 1`.
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
ABSENT = ("null-image", "alpha-zero")
STAT_NAMES = ("k_mean", "k_std", "v_mean", "v_std")


@dataclass
class SynapseConfig:
    # Music UNet decoder blocks that get the synapse, counted 1.. among decoder blocks with
    # cross-attention, lowest resolution first. None: all of them (the paper's best, Table 4).
    blocks: list[int] | None = None
    # "learned" (the paper's choice, Table 7) or a fixed value in [0, 1].
    alpha: str | float = "learned"
    alpha_init: float = 0.5
    enabled: bool = True
    # What an absent image means: "null-image" (zero features, alpha kept) or, for models saved
    # before it existed, "alpha-zero" (the layer falls back to text only).
    absent: str = "null-image"
    # The inverted T2I timesteps the image statistics were measured at (empty: not standardised).
    stats_timesteps: list[int] = field(default_factory=list)
    stats_tokens: int = 0
    # Filled in when the synapse is built: the music layers it sits in and their T2I partners.
    layers: list[str] = field(default_factory=list)
    partners: list[str] = field(default_factory=list)
    music_dims: list[int] = field(default_factory=list)
    image_dims: list[int] = field(default_factory=list)
    # The global path's output width (the music UNet's timestep embedding); 0: no global path.
    global_dim: int = 0

    def validate(self):
        if isinstance(self.alpha, str):
            if self.alpha != "learned":
                raise MelFusionError(f"synapse alpha must be 'learned' or a number in [0, 1], not {self.alpha!r}")
        elif not 0.0 <= float(self.alpha) <= 1.0:
            raise MelFusionError(f"synapse alpha must lie in [0, 1], got {self.alpha}")
        if not 0.0 < self.alpha_init < 1.0:
            raise MelFusionError(f"synapse alpha_init must lie strictly between 0 and 1, got {self.alpha_init}")
        if self.absent not in ABSENT:
            raise MelFusionError(f"synapse absent must be one of {', '.join(ABSENT)}, not {self.absent!r}")

    @property
    def standardize(self) -> bool:
        return bool(self.stats_timesteps)


class SynapseLayer(torch.nn.Module):
    """The learned part of one blended layer: the image projections, the layer's alpha and, once
    measured, the statistics its image features are standardised with."""

    def __init__(self, image_dim: int, music_dim: int, alpha: str | float, alpha_init: float,
                 stats_shape: tuple[int, int] | None = None):
        super().__init__()
        self.to_k_image = torch.nn.Linear(image_dim, music_dim, bias=False)
        self.to_v_image = torch.nn.Linear(image_dim, music_dim, bias=False)
        if alpha == "learned":
            self.alpha_logit = torch.nn.Parameter(torch.tensor(math.log(alpha_init / (1 - alpha_init))))
        else:
            self.register_buffer("fixed_alpha", torch.tensor(float(alpha)))
        if stats_shape is not None:
            steps, tokens = stats_shape
            for name in STAT_NAMES:
                shape = (steps, tokens, image_dim) if name.endswith("mean") else (steps, 1, image_dim)
                self.register_buffer(name, torch.zeros(shape) if name.endswith("mean") else torch.ones(shape))

    @property
    def alpha(self) -> torch.Tensor:
        if hasattr(self, "alpha_logit"):
            return torch.sigmoid(self.alpha_logit)
        return self.fixed_alpha

    def standardize(self, k: torch.Tensor, v: torch.Tensor, step_index: torch.Tensor):
        """`(batch, tokens, dim)` features read at inverted steps `step_index` (batch,), counted from 0."""
        if not hasattr(self, "k_mean"):
            return k, v
        i = step_index.to(k.device)
        return (k - self.k_mean[i]) / self.k_std[i], (v - self.v_mean[i]) / self.v_std[i]


class SynapseProcessor:
    """Attention processor for one music decoder cross-attention layer (holds no weights itself)."""

    def __init__(self, synapse: "VisualSynapse", index: int):
        self.synapse, self.index = synapse, index

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        hidden_states, context, restore = prepare_inputs(attn, hidden_states, encoder_hidden_states, temb)
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        bias = bias_shape(attention_mask)
        syn = self.synapse
        null_image = syn.config.absent == "null-image"
        if syn.config.enabled and (syn.image_kv is not None or null_image):
            layer = syn.layers[self.index]
            a = layer.alpha.to(key.dtype).expand(key.shape[0])
            if syn.image_kv is None:  # the null image for the whole batch
                dim = layer.to_k_image.in_features
                k_img = v_img = torch.zeros(key.shape[0], key.shape[1], dim, dtype=key.dtype, device=key.device)
            else:
                k_img, v_img = (x.to(key.dtype) for x in syn.image_kv[self.index])
                present = syn.image_present.to(key.dtype)[:, None, None]
                if null_image:
                    k_img, v_img = k_img * present, v_img * present
                else:
                    a = a * present[:, 0, 0]
            a = a[:, None, None]
            key = a * layer.to_k_image(k_img) + (1 - a) * key
            value = a * layer.to_v_image(v_img) + (1 - a) * value
            if bias is not None:
                # log((1 - a) * m + a): 0 where the caption has a token, log(a) where it is padding.
                # Written with `where` so that a = 0 gives the text mask exactly and no infinite gradient.
                keep = bias > MASK_FLOOR / 2  # (batch, 1, 1, keys)
                a4 = a[:, :, :, None]
                padded = torch.where(a4 > 0, torch.log(a4.clamp(min=1e-12)), torch.full_like(a4, MASK_FLOOR))
                bias = torch.where(keep, torch.zeros_like(padded), padded)
        out = attend(attn, query, key, value, bias)
        return finish(attn, out, residual, restore)


class _GlobalEmbedding:
    """Forward hook on the music UNet's timestep embedding: adds the synapse's global path. An
    object, not a closure, so that a deep copy of the network (a distillation student) reads its
    own copy of the synapse."""

    def __init__(self, synapse: "VisualSynapse"):
        self.synapse = synapse

    def __call__(self, module, args, output):
        extra = self.synapse.global_embedding(output.shape[0], output.dtype)
        return output if extra is None else output + extra.to(output.dtype)


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
        stats = (len(config.stats_timesteps), config.stats_tokens) if config.standardize else None
        self.layers = torch.nn.ModuleList(SynapseLayer(i, m, config.alpha, config.alpha_init, stats)
                                          for i, m in zip(config.image_dims, config.music_dims))
        if config.global_dim:
            self.global_proj = torch.nn.Linear(2 * sum(config.image_dims), config.global_dim, bias=False)
            torch.nn.init.zeros_(self.global_proj.weight)
        # Per-call context, set by `condition` around a music UNet forward pass.
        self.image_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.image_present: torch.Tensor | None = None
        self._global_hook = None

    def global_embedding(self, batch: int, dtype: torch.dtype) -> torch.Tensor | None:
        """The global path's addition to the timestep embedding, `(batch, global_dim)`, or None
        (no global path, the synapse off, or no picture in the batch)."""
        if not self.config.global_dim or not self.config.enabled or self.image_kv is None:
            return None
        pooled = torch.cat([x.to(dtype).mean(dim=1) for k, v in self.image_kv for x in (k, v)], dim=-1)
        out = self.global_proj(pooled)
        if self.image_present is not None:
            out = out * self.image_present.to(out.dtype)[:, None]
        if out.shape[0] not in (1, batch):
            raise MelFusionError(f"image features for {out.shape[0]} samples in a batch of {batch}")
        return out

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
        if self.config.global_dim:
            if self._global_hook is not None:
                self._global_hook.remove()
            self._global_hook = music_unet.time_embedding.register_forward_hook(_GlobalEmbedding(self))

    def condition(self, image_kv, image_present: torch.Tensor | None = None):
        """Context manager: the music UNet's forward passes inside it see these image features.

        `image_kv`: per synapse layer `(keys, values)`, `(batch, tokens, image_dim)`, already
        ordered like `config.partners` (and standardised, see `standardize`). `None`: no image
        (the null image; text only for `absent = "alpha-zero"`). `image_present` (batch,) marks
        the samples whose image is absent with 0.
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

    # -- image statistics ----------------------------------------------------------------------
    def standardize(self, image_kv, step_index: torch.Tensor):
        """Per layer `(keys, values)` read at inverted steps `step_index` (batch,), counted from 0
        (the trajectory's first step after the clean latent), minus the training set's mean and
        over its spread at that step; unchanged when no statistics were measured."""
        return [layer.standardize(k, v, step_index) for layer, (k, v) in zip(self.layers, image_kv)]

    @torch.no_grad()
    def set_statistics(self, timesteps: list[int], features_at) -> None:
        """Measure the statistics on training features: `features_at(i)` returns, per synapse
        layer, `(keys, values)` of shape `(records, tokens, dim)` read at inverted step i (from 0)."""
        means = {name: [[] for _ in self.layers] for name in STAT_NAMES}
        tokens = 0
        for i in range(len(timesteps)):
            for j, (k, v) in enumerate(features_at(i)):
                tokens = k.shape[1]
                for prefix, x in (("k", k.float()), ("v", v.float())):
                    mean = x.mean(0)
                    means[f"{prefix}_mean"][j].append(mean)
                    means[f"{prefix}_std"][j].append((x - mean).square().mean(dim=(0, 1)).sqrt()[None].clamp(min=1e-4))
        for j, layer in enumerate(self.layers):
            for name in STAT_NAMES:
                layer.register_buffer(name, torch.stack(means[name][j]).contiguous())
        self.config.stats_timesteps = [int(t) for t in timesteps]
        self.config.stats_tokens = int(tokens)

    @torch.no_grad()
    def zero_projections(self) -> None:
        """Pk = Pv = 0: every picture reads as the null image until training moves them (their
        gradients are not zero, so they do move)."""
        for layer in self.layers:
            layer.to_k_image.weight.zero_()
            layer.to_v_image.weight.zero_()

    def alphas(self) -> list[float]:
        return [float(layer.alpha.detach()) for layer in self.layers]

    def projection_norms(self) -> list[tuple[float, float]]:
        """Per layer, the Frobenius norms of the image key and value projections (zero while the
        image path is as it started from a text-only checkpoint)."""
        return [(float(layer.to_k_image.weight.detach().norm()), float(layer.to_v_image.weight.detach().norm()))
                for layer in self.layers]

    def save_pretrained(self, directory: str | Path) -> None:
        save_module(self, self.config, directory, CONFIG_NAME, WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "VisualSynapse":
        def config(**saved):
            # Saved before `absent` existed: trained with an absent image as alpha = 0.
            return SynapseConfig(**({"absent": "alpha-zero"} | saved))

        directory = Path(directory)
        synapse = load_module(cls, config, directory, CONFIG_NAME, WEIGHTS_NAME, "visual synapse",
                              missing_hint=_missing_statistics)
        return synapse


def _missing_statistics(missing: list[str]) -> str | None:
    if any(name.rsplit(".", 1)[-1] in STAT_NAMES for name in missing):
        return "its config says the image features are standardised, but the image statistics are missing"
    return None
