"""Capturing the self-attention keys and values of a frozen text-to-image UNet's decoder.

MeLFusion reads what the T2I model "sees" in an image from the keys and values of the
self-attention layers in the UNet's decoder (up) blocks, while that UNet runs on the image's
DDIM-inverted latents. `KVCaptureProcessor` computes attention exactly as diffusers' default
processor does and, while its store is recording, keeps the keys and values pooled to a fixed
number of tokens (the text's token count, which the visual synapse blends them with).
"""
from __future__ import annotations

import torch

from melfusion.attention import attend, finish, pool_tokens, prepare_inputs


class KVStore:
    """Holds, per captured layer, `(keys, values)` of shape `(batch, num_tokens, inner_dim)`."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.num_tokens: int | None = None
        self.kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers

    def start(self, num_tokens: int):
        self.num_tokens = num_tokens
        self.kv = [None] * self.num_layers

    def stop(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        kv, self.num_tokens = self.kv, None
        if any(x is None for x in kv):
            raise RuntimeError("a captured T2I decoder layer did not run")
        return kv


class KVCaptureProcessor:
    def __init__(self, store: KVStore, index: int):
        self.store, self.index = store, index

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        hidden_states, context, restore = prepare_inputs(attn, hidden_states, encoder_hidden_states, temb)
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        if self.store.num_tokens is not None:
            n = self.store.num_tokens
            self.store.kv[self.index] = (pool_tokens(key, n), pool_tokens(value, n))
        bias = None
        if attention_mask is not None:
            bias = attn.prepare_attention_mask(attention_mask, key.shape[1], query.shape[0])
            bias = bias.view(query.shape[0], attn.heads, -1, bias.shape[-1])
        out = attend(attn, query, key, value, bias)
        return finish(attn, out, residual, restore)


def decoder_self_attention_names(unet) -> list[str]:
    """Processor names of self-attention layers in the decoder, lowest resolution first.

    diffusers orders `up_blocks` from the lowest resolution up, and a block's transformer
    layers from input to output, so the natural order of the names is the depth order.
    """
    names = [n for n in unet.attn_processors if n.startswith("up_blocks.") and n.endswith("attn1.processor")]
    return sorted(names, key=_depth_key)


def _depth_key(name: str):
    parts = name.split(".")
    nums = [int(p) for p in parts if p.isdigit()]
    return tuple(nums)
