"""The attention arithmetic shared by melfusion's attention processors.

diffusers' `Attention` modules delegate their forward pass to a processor; melfusion's two
processors (the T2I key/value capture and the visual synapse) change what goes in or what is
kept, and both finish with the same scaled dot-product attention written here once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def flatten_tokens(hidden_states: torch.Tensor):
    """`(batch, channels, h, w)` -> `(batch, h*w, channels)`; sequences pass through. Returns a restore fn."""
    if hidden_states.ndim != 4:
        return hidden_states, lambda x: x
    b, c, h, w = hidden_states.shape
    flat = hidden_states.view(b, c, h * w).transpose(1, 2)
    return flat, lambda x: x.transpose(-1, -2).reshape(b, c, h, w)


def attend(attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Multi-head attention of `(batch, tokens, inner)` projections, then `attn`'s output projection.

    `bias` is an additive mask broadcastable to `(batch, heads, queries, keys)`.
    """
    b = query.shape[0]
    head_dim = key.shape[-1] // attn.heads
    q, k, v = (x.view(b, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(query.dtype)
    return attn.to_out[1](attn.to_out[0](out))


def prepare_inputs(attn, hidden_states, encoder_hidden_states, temb=None):
    """What every processor does first: spatial/group norm and the context to attend to."""
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    hidden_states, restore = flatten_tokens(hidden_states)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if encoder_hidden_states is None:
        context = hidden_states
    elif attn.norm_cross:
        context = attn.norm_encoder_hidden_states(encoder_hidden_states)
    else:
        context = encoder_hidden_states
    return hidden_states, context, restore


def finish(attn, out, residual, restore):
    out = restore(out)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def bias_shape(mask_bias: torch.Tensor | None) -> torch.Tensor | None:
    """diffusers hands cross-attention masks over as `(batch, 1, keys)` biases; add the heads axis."""
    if mask_bias is None:
        return None
    return mask_bias[:, None] if mask_bias.ndim == 3 else mask_bias


def pool_tokens(x: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Average `(batch, tokens, dim)` over contiguous runs of tokens down to `num_tokens`."""
    return F.adaptive_avg_pool1d(x.transpose(1, 2), num_tokens).transpose(1, 2)
