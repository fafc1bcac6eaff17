"""The paper's baselines for image + text conditioning, built on the same music LDM.

- `text`: TANGO, the music LDM with the synapse off.
- `concat`: image tokens from a trained image encoder appended to the caption's tokens
  (AudioLDM 2-style feature concatenation, appendix Table 5).
- `tangopp`: TANGO++ (appendix A): early fusion. The image encoder's and the text encoder's
  pooled embeddings are projected into one space and aligned by the image-text contrastive
  loss of appendix eq. 1; the LDM is conditioned on the hybrid of caption and image tokens.
- `image-encoder`: the visual synapse fed by image-encoder tokens in place of the T2I
  model's inverted self-attention features (the "CLIP ViT features" row of Table 5).

The image encoder is a small ViT trained with the music model (no pretrained image encoder
can be had offline here; at paper scale a CLIP ViT would take its place).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from melfusion.errors import MelFusionError
from melfusion.weights import load_module, save_module

CONFIG_NAME = "image_encoder_config.json"
WEIGHTS_NAME = "image_encoder.safetensors"


@dataclass
class ImageEncoderConfig:
    image_size: int = 64
    patch_size: int = 8
    width: int = 192
    depth: int = 2
    heads: int = 4
    out_dim: int = 384        # the text encoder's width: tokens join the caption's
    itc_dim: int = 128        # TANGO++'s shared image-text space


class ImageEncoder(torch.nn.Module):
    """`forward(pixels (batch, 3, S, S) in [0, 1]) -> tokens (batch, (S / patch)^2, out_dim)`."""

    def __init__(self, config: ImageEncoderConfig):
        super().__init__()
        c = self.config = config
        if c.image_size % c.patch_size:
            raise MelFusionError("image_size must be a multiple of patch_size")
        n = (c.image_size // c.patch_size) ** 2
        self.patch = torch.nn.Conv2d(3, c.width, c.patch_size, stride=c.patch_size)
        self.position = torch.nn.Parameter(torch.randn(1, n, c.width) * 0.02)
        layer = torch.nn.TransformerEncoderLayer(c.width, c.heads, 4 * c.width, dropout=0.0,
                                                 batch_first=True, norm_first=True)
        self.blocks = torch.nn.TransformerEncoder(layer, c.depth, enable_nested_tensor=False)
        self.norm = torch.nn.LayerNorm(c.width)
        self.to_tokens = torch.nn.Linear(c.width, c.out_dim)
        # TANGO++'s projections into the shared space, and the contrastive temperature.
        self.image_head = torch.nn.Linear(c.out_dim, c.itc_dim)
        self.text_head = torch.nn.Linear(c.out_dim, c.itc_dim)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[-1] != self.config.image_size:
            pixels = F.interpolate(pixels, size=(self.config.image_size,) * 2, mode="bilinear", align_corners=False)
        x = self.patch(pixels * 2 - 1).flatten(2).transpose(1, 2) + self.position
        return self.to_tokens(self.norm(self.blocks(x)))

    def itc_loss(self, image_tokens: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Appendix eq. 1: symmetric InfoNCE between pooled image and pooled caption embeddings."""
        m = text_mask.to(text.dtype)[:, :, None]
        text_pooled = (text * m).sum(1) / m.sum(1).clamp(min=1)
        zi = F.normalize(self.image_head(image_tokens.mean(1)), dim=-1)
        zt = F.normalize(self.text_head(text_pooled), dim=-1)
        logits = self.logit_scale.exp().clamp(max=100) * zi @ zt.T
        target = torch.arange(len(zi), device=zi.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    def save_pretrained(self, directory: str | Path) -> None:
        save_module(self, self.config, directory, CONFIG_NAME, WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ImageEncoder":
        return load_module(cls, ImageEncoderConfig, directory, CONFIG_NAME, WEIGHTS_NAME, "image encoder")


def encoder_kv(tokens: torch.Tensor, num_tokens: int, layers: int):
    """The `image-encoder` baseline's synapse input: the same pooled tokens for every layer."""
    from melfusion.attention import pool_tokens

    pooled = pool_tokens(tokens, num_tokens)
    return [(pooled, pooled)] * layers
