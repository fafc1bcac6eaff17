"""Reading user images safely and shaping them for the text-to-image model."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from melfusion.errors import MelFusionError

# Decompression bombs: a small file can declare billions of pixels. 40 megapixels covers any
# real photo (a 7,700 x 5,200 frame) and bounds memory to well under a gigabyte.
MAX_PIXELS = 40_000_000
# Only these decoders ever see a user's file (PIL would otherwise try every plugin it has, EPS via
# Ghostscript among them). JPEG covers the multi-picture JPEGs many phones write (PIL's MPO).
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
FORMAT_NAMES = "PNG, JPEG, WebP, GIF, BMP or TIFF"
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, draft_side: int | None = None) -> Image.Image:
    """An RGB PIL image, upright as a viewer shows it (EXIF orientation applied); grayscale,
    16-bit, CMYK, palette and alpha images are converted (alpha over white); an animation gives
    its first frame. Anything else is a MelFusionError with a one-line reason.

    `draft_side`: for a preview, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale, at least this
    many pixels a side (the whole file is still read and checked); other formats load whole."""
    path = Path(path)
    if not path.exists():
        raise MelFusionError(f"image not found: {path}")
    if not path.is_file():
        raise MelFusionError(f"image path is not a file: {path}")
    if path.stat().st_size == 0:
        raise MelFusionError(f"image file is empty: {path}")
    if not os.access(path, os.R_OK):
        raise MelFusionError(f"cannot read the image (permission denied): {path}")
    too_large = f"image is too large (limit {max_pixels:,} pixels): {path}"
    _register_decoders()
    try:
        # PIL's own bomb check (a warning above 89 megapixels) would print a line of its own;
        # ours is lower and refuses. Other PIL warnings (odd EXIF, odd palettes) are noise here:
        # the file is either read below or refused.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path, formats=FORMATS) as probe:
                w, h = probe.size
                if w * h > max_pixels or w <= 0 or h <= 0:
                    raise MelFusionError(f"image is too large: {w}x{h} pixels (limit {max_pixels:,})"
                                         if w * h > max_pixels else f"image has no pixels: {w}x{h}")
                probe.verify()
            with Image.open(path, formats=FORMATS) as img:
                if draft_side and img.format == "JPEG":
                    img.draft("RGB", (draft_side, draft_side))
                img.load()
                return to_rgb(upright(img))
    except MelFusionError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MelFusionError(too_large) from None
    except UnidentifiedImageError:
        raise MelFusionError(f"not a readable image: {path} (expected {FORMAT_NAMES})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # What PIL's decoders raise for a damaged file (truncated data, a lying header, a broken chunk).
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MelFusionError(f"corrupt or truncated image: {path} ({first})") from None
    except MemoryError:
        raise MelFusionError(too_large) from None


def _register_decoders() -> None:
    """Registers the decoders of FORMATS, and only those: `Image.init()` would import all of PIL's
    40-odd plugins (about 35 ms of a cold start), and `open(formats=)` looks only among those
    registered."""
    from PIL import (BmpImagePlugin, GifImagePlugin, JpegImagePlugin, MpoImagePlugin,  # noqa: F401
                     PngImagePlugin, TiffImagePlugin)
    try:
        from PIL import WebPImagePlugin  # noqa: F401
    except ImportError:  # a Pillow built without libwebp: open() then reports WebP as unreadable
        pass


def upright(img: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (phones store the sensor's frame and a tag).
    A damaged EXIF block is ignored, as browsers do: the picture then shows as stored."""
    try:
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of a large upright photo
    except Exception:  # noqa: BLE001 - any failure to parse the tag means "no usable orientation"
        pass
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _to_8bit(img)
    if img.mode == "RGB":
        return img.copy()
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit grayscale as an 8-bit "L" image scaled as a viewer shows it (PIL's own
    convert clips at 255, turning a 16-bit photo white)."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if arr.size and arr.max() <= 1.0:  # floats in [0, 1]
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if img.mode == "I" and arr.size and 0 <= arr.min() and arr.max() <= 255:
        return Image.fromarray(arr.astype(np.uint8), "L")  # 8-bit values in a 32-bit container
    return Image.fromarray((np.clip(arr, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8), "L")


def image_to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """Centre-crop to a square, resize to `size`, and return `(3, size, size)` in [0, 1]."""
    img = to_rgb(img)
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
