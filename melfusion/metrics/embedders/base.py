"""The interfaces every metric model implements, whatever its weights.

- `AudioEmbedder`: `embed(waves) -> (n, d)`, one vector per clip (FAD / FD).
- `AudioClassifier`: an `AudioEmbedder` that also gives `label_logits(waves) -> (n, k)` (paired KL).
- `TextAudioModel`: CLAP-like; `embed_text`, `embed_audio` (unit vectors) and `logit_scale`.
- `ImageTextModel`: CLIP-like; `embed_text`, `embed_image` (unit vectors) and `logit_scale`.

Waves are 1-D float arrays. They are taken to be at the model's own `sample_rate` unless the
caller passes `sample_rate=`, in which case they are resampled first. A judge trained by this
project (the later `synthmel` one) plugs in by subclassing `AudioEmbedder` or `AudioClassifier`
and registering a loader in `melfusion.metrics.embedders`.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from melfusion.audio.io import read_audio, resample
from melfusion.errors import MelFusionError


def check_waves(waves: Sequence[np.ndarray], from_rate: int | None, to_rate: int) -> list[np.ndarray]:
    """Mono float32 copies at `to_rate`; refuses empty lists, empty clips and non-finite samples."""
    if isinstance(waves, np.ndarray) and waves.ndim == 1:
        raise MelFusionError("expected a list of waveforms, got a single 1-D array")
    if len(waves) == 0:
        raise MelFusionError("no waveforms given")
    out = []
    for i, wave in enumerate(waves):
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            raise MelFusionError(f"waveform {i} must be mono 1-D samples, got shape {wave.shape}")
        if wave.size == 0:
            raise MelFusionError(f"waveform {i} is empty")
        if not np.isfinite(wave).all():
            raise MelFusionError(f"waveform {i} contains NaN or infinite samples")
        if from_rate is not None and from_rate != to_rate:
            wave = resample(wave, int(from_rate), int(to_rate))
        out.append(np.ascontiguousarray(wave, dtype=np.float32))
    return out


class AudioEmbedder:
    """One embedding per clip. Subclasses set `name`, `sample_rate`, `dim` and write `_embed`."""

    name: str = "audio"
    sample_rate: int = 16000
    dim: int = 0

    def embed(self, waves: Sequence[np.ndarray], sample_rate: int | None = None) -> np.ndarray:
        """`(n, dim)` float32 embeddings of n clips."""
        return self._embed(check_waves(waves, sample_rate, self.sample_rate))

    def _embed(self, waves: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def embed_files(self, paths: Sequence[str | os.PathLike]) -> np.ndarray:
        return self.embed([read_audio(p, self.sample_rate) for p in paths])


class AudioClassifier(AudioEmbedder):
    """An embedder with a label head; `label_logits` feed the paired KL."""

    num_labels: int = 0

    def label_logits(self, waves: Sequence[np.ndarray], sample_rate: int | None = None) -> np.ndarray:
        """`(n, num_labels)` pre-activation logits."""
        return self._label_logits(check_waves(waves, sample_rate, self.sample_rate))

    def _label_logits(self, waves: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError


class TextAudioModel(AudioEmbedder):
    """A text-audio contrastive model (CLAP). `embed` is `embed_audio`."""

    logit_scale: float = 1.0

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """`(n, dim)` unit-norm text embeddings."""
        raise NotImplementedError

    def embed_audio(self, waves: Sequence[np.ndarray], sample_rate: int | None = None) -> np.ndarray:
        """`(n, dim)` unit-norm audio embeddings."""
        return self.embed(waves, sample_rate=sample_rate)


class ImageTextModel:
    """An image-text contrastive model (CLIP)."""

    name: str = "image-text"
    dim: int = 0
    logit_scale: float = 1.0

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """`(n, dim)` unit-norm text embeddings."""
        raise NotImplementedError

    def embed_image(self, images) -> np.ndarray:
        """`(n, dim)` unit-norm embeddings of PIL images, `(h, w, 3)` uint8 arrays or image paths."""
        raise NotImplementedError


def check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise MelFusionError("expected a list of texts, got a single string")
    texts = list(texts)
    if not texts:
        raise MelFusionError("no texts given")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise MelFusionError(f"text {i} is not a string: {type(t).__name__}")
    return texts


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
