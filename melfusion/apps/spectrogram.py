"""A picture of a log-mel spectrogram, drawn with numpy and PIL (no plotting library).

Time runs left to right, low frequencies at the bottom; loudness maps through a small
perceptually ordered colour map (black - purple - orange - pale yellow, like "magma")."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from melfusion.errors import MelFusionError

# Anchor colours of the map, from quiet to loud; the rest is linear interpolation between them.
_ANCHORS = np.array([
    (0, 0, 4), (28, 16, 68), (79, 18, 123), (129, 37, 129), (181, 54, 122),
    (229, 80, 100), (251, 135, 97), (254, 194, 135), (252, 253, 191)], dtype=np.float32)


def colour_map(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] of any shape -> uint8 RGB of that shape plus a last axis of 3."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = np.floor(v).astype(np.int64).clip(0, len(_ANCHORS) - 2)
    frac = (v - lo)[..., None]
    rgb = _ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac
    return np.round(rgb).astype(np.uint8)


def spectrogram_image(log_mel, width: int = 800, height: int = 256, dynamic_range_db: float = 80.0) -> Image.Image:
    """An RGB image of `log_mel`, shaped `(frames, mels)` or `(1, frames, mels)` (natural-log magnitudes).

    The top `dynamic_range_db` decibels below the loudest bin are spread over the colour map."""
    mel = log_mel.detach().cpu().numpy() if hasattr(log_mel, "detach") else np.asarray(log_mel)
    mel = np.asarray(mel, dtype=np.float32)
    if mel.ndim == 3:
        if mel.shape[0] != 1:
            raise MelFusionError(f"one spectrogram at a time, got a batch of {mel.shape[0]}")
        mel = mel[0]
    if mel.ndim != 2 or mel.shape[0] < 1 or mel.shape[1] < 1:
        raise MelFusionError(f"a spectrogram must be (frames, mels), got shape {mel.shape}")
    db = mel * (20.0 / np.log(10.0))  # natural-log magnitude -> decibels
    top = float(np.nanmax(db)) if np.isfinite(db).any() else 0.0
    norm = (db - (top - dynamic_range_db)) / dynamic_range_db
    rgb = colour_map(norm.T[::-1])  # (mels, frames), low mels at the bottom
    return Image.fromarray(rgb, "RGB").resize((width, height), Image.Resampling.BILINEAR)


def save_spectrogram(path: str | os.PathLike, log_mel, **kwargs) -> Path:
    """Write the picture as PNG atomically (a temporary file renamed into place)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise MelFusionError(f"the spectrogram picture must be a .png file, got {path}")
    img = spectrogram_image(log_mel, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
