"""Reading user images safely and shaping them for the text-to-image model."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from melfusion.errors import MelFusionError

# Decompression bombs: a small file can declare billions of pixels. 40 megapixels covers any
# real photo (a 7,700 x 5,200 frame) and bounds memory to well under a gigabyte.
MAX_PIXELS = 40_000_000


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An RGB PIL image; grayscale, palette and alpha images are converted (alpha over white)."""
    path = Path(path)
    if not path.exists():
        raise MelFusionError(f"image not found: {path}")
    if not path.is_file():
        raise MelFusionError(f"image path is not a file: {path}")
    if path.stat().st_size == 0:
        raise MelFusionError(f"image file is empty: {path}")
    try:
        with Image.open(path) as probe:
            w, h = probe.size
            if w * h > max_pixels:
                raise MelFusionError(f"image is too large: {w}x{h} pixels (limit {max_pixels:,})")
            probe.verify()
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return to_rgb(img)
    except MelFusionError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MelFusionError(f"not a readable image: {path} ({type(exc).__name__})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise MelFusionError(f"corrupt or truncated image: {path} ({str(exc).splitlines()[0]})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def image_to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """Centre-crop to a square, resize to `size`, and return `(3, size, size)` in [0, 1]."""
    img = to_rgb(img)
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
