"""CLIP (image-text contrastive) through transformers' `CLIPModel`, the image side of IMSM.

Layout: a directory as published on the hub (e.g. openai/clip-vit-base-patch32): `config.json` +
weights, `preprocessor_config.json` (CLIPImageProcessor; without torchvision transformers uses
its PIL implementation, which needs nothing more) and the CLIP BPE tokenizer (`vocab.json`,
`merges.txt`, `tokenizer_config.json` and/or `tokenizer.json`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from melfusion.errors import MelFusionError
from melfusion.metrics.embedders.base import ImageTextModel, unit_rows
from melfusion.metrics.embedders.hf import (TOKENIZER_FILES, check_model_dir, embed_texts, load_part,
                                            max_text_tokens, require_files)


def to_rgb_images(images) -> list:
    """PIL images from PIL images, `(h, w, 3)` / `(h, w)` uint8 arrays or image file paths."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(images, (str, os.PathLike, np.ndarray)) and not (isinstance(images, np.ndarray) and images.ndim == 4):
        raise MelFusionError("expected a list of images")
    out = []
    for i, image in enumerate(images):
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            if not path.is_file():
                raise MelFusionError(f"image file not found: {path}")
            try:
                with Image.open(path) as opened:
                    image = opened.convert("RGB")
            except (UnidentifiedImageError, OSError) as exc:
                raise MelFusionError(f"cannot read image {path}: {str(exc).splitlines()[0]}") from None
        elif isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise MelFusionError(f"image {i} must be a uint8 (h, w[, 3]) array, got {image.dtype} {image.shape}")
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise MelFusionError(f"image {i} is a {type(image).__name__}, not an image")
        out.append(image.convert("RGB"))
    if not out:
        raise MelFusionError("no images given")
    return out


def image_processor_class():
    """transformers' PIL CLIP image processor where it exists: the default one wants torchvision."""
    try:
        from transformers import CLIPImageProcessorPil
        return CLIPImageProcessorPil
    except ImportError:
        from transformers import CLIPImageProcessor
        return CLIPImageProcessor


class CLIP(ImageTextModel):
    """`embed_image(images) -> (n, d)`, `embed_text(texts) -> (n, d)`, both unit-norm; `logit_scale`."""

    name = "clip"

    def __init__(self, model, image_processor, tokenizer, batch_size: int = 16):
        self.model = model.eval().requires_grad_(False)
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.dim = int(model.config.projection_dim)
        self.logit_scale = float(model.logit_scale.exp())
        self.max_tokens = max_text_tokens(tokenizer, model.config.text_config.max_position_embeddings)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        return embed_texts(self.model, self.tokenizer, texts, self.batch_size, self.max_tokens)

    @torch.no_grad()
    def embed_image(self, images) -> np.ndarray:
        images = to_rgb_images(images)
        out = []
        for i in range(0, len(images), self.batch_size):
            pixels = self.image_processor(images[i:i + self.batch_size], return_tensors="pt")["pixel_values"]
            out.append(self.model.get_image_features(pixel_values=pixels).pooler_output.float().numpy())
        return unit_rows(np.concatenate(out))

    @classmethod
    def from_pretrained(cls, directory: str | Path, batch_size: int = 16) -> "CLIP":
        from transformers import AutoTokenizer, CLIPModel

        directory = check_model_dir(directory, "CLIP", ("clip",))
        require_files(directory, "CLIP tokenizer", TOKENIZER_FILES)
        require_files(directory, "CLIP image processor", (("preprocessor_config.json",), ("processor_config.json",)))
        model = load_part(CLIPModel.from_pretrained, directory, "the CLIP model")
        processor = load_part(image_processor_class().from_pretrained, directory, "the CLIP image processor")
        tokenizer = load_part(AutoTokenizer.from_pretrained, directory, "the CLIP tokenizer")
        return cls(model, processor, tokenizer, batch_size)

    def save_pretrained(self, directory: str | Path) -> None:
        self.model.save_pretrained(str(directory))
        self.image_processor.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))
