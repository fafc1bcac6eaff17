"""Reading and writing audio files: WAV/FLAC in, mono float at the model's rate; 16-bit WAV out."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from melfusion.atomic import atomic_file
from melfusion.errors import MelFusionError


def resample(wave: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited polyphase resampling along the last axis."""
    if from_rate == to_rate:
        return wave
    g = math.gcd(int(from_rate), int(to_rate))
    from scipy.signal import resample_poly  # scipy.signal costs a fresh process 0.3-0.6 s: only when resampling

    return resample_poly(wave, to_rate // g, from_rate // g, axis=-1).astype(np.float32)


def read_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at `sample_rate`; channels are averaged."""
    path = Path(path)
    if not path.is_file():
        raise MelFusionError(f"audio file not found: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for unreadable files
        raise MelFusionError(f"cannot read audio file {path}: {str(exc).splitlines()[0]}") from None
    if data.shape[0] == 0:
        raise MelFusionError(f"audio file is empty: {path}")
    return resample(data.mean(axis=1), rate, sample_rate)


def write_wav(path: str | os.PathLike, wave: np.ndarray, sample_rate: int) -> Path:
    """Write mono 16-bit PCM atomically: a failure never leaves a partial file at `path`."""
    path = Path(path)
    wave = np.clip(np.asarray(wave, dtype=np.float32).reshape(-1), -1.0, 1.0)
    with atomic_file(path) as tmp:
        sf.write(str(tmp), wave, sample_rate, subtype="PCM_16", format="WAV")
    return path
