"""Frechet distance between Gaussians fitted to embeddings: FAD (VGGish) and FD (PANNs CNN14).

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

All arithmetic is float64. The trace of the matrix square root is taken in its symmetric form,
tr((S1 S2)^(1/2)) = tr((R S2 R)^(1/2)) with R = S1^(1/2), using eigendecompositions of symmetric
positive semi-definite matrices only. That stays real and exact where `scipy.linalg.sqrtm` of
the non-symmetric product S1 S2 goes complex or loses accuracy (singular covariances, which are
the rule when there are fewer clips than embedding dimensions).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from melfusion.errors import MelFusionError


def _as_embeddings(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise MelFusionError(f"{name} embeddings must be a 2-D array (samples, dims), got shape {x.shape}")
    if x.shape[0] < 2:
        raise MelFusionError(f"{name} embeddings need at least two samples for a covariance, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise MelFusionError(f"{name} embeddings contain NaN or infinite values")
    return x


def gaussian_stats(embeddings) -> tuple[np.ndarray, np.ndarray]:
    """Mean `(d,)` and unbiased covariance `(d, d)` (ddof=1, as FID/FAD use) of `(n, d)` embeddings."""
    x = _as_embeddings(embeddings, "the")
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix; round-off negative eigenvalues are clipped to zero."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2, via tr((R S2 R)^(1/2)), R = S1^(1/2)."""
    root = _psd_sqrt(sigma1)
    inner = root @ sigma2 @ root
    values = np.linalg.eigvalsh((inner + inner.T) / 2.0)
    return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.asarray(mu1, np.float64).reshape(-1), np.asarray(mu2, np.float64).reshape(-1)
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape[0] != d or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise MelFusionError(
            f"Frechet distance needs matching dimensions: means {mu1.shape[0]} and {mu2.shape[0]}, "
            f"covariances {sigma1.shape} and {sigma2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    # The exact value is >= 0; round-off can leave a tiny negative number for identical inputs.
    return float(max(value, 0.0))


def frechet_distance_embeddings(reference, generated) -> float:
    """Frechet distance between Gaussians fitted to `(n1, d)` and `(n2, d)` embeddings."""
    a = _as_embeddings(reference, "reference")
    b = _as_embeddings(generated, "generated")
    if a.shape[1] != b.shape[1]:
        raise MelFusionError(
            f"reference and generated embeddings differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


def _embed_for_frechet(embedder, waves: Sequence[np.ndarray], sample_rate: int | None, frames: bool) -> np.ndarray:
    # VGGish-style FAD pools every 0.96 s frame embedding of every clip (as Google's FAD and
    # audioldm_eval do); embedders without frames give one embedding per clip.
    if frames and hasattr(embedder, "embed_frames"):
        per_clip = embedder.embed_frames(waves, sample_rate=sample_rate)
        return np.concatenate(per_clip, axis=0)
    return embedder.embed(waves, sample_rate=sample_rate)


def frechet_audio_distance(embedder, reference_waves: Sequence[np.ndarray], generated_waves: Sequence[np.ndarray],
                           sample_rate: int | None = None, frames: bool = True) -> float:
    """FAD (with a VGGish embedder) or FD (with PANNs CNN14) between two sets of waveforms.

    `sample_rate` is the rate of the given waves (default: the embedder's own). With
    `frames=True` an embedder offering `embed_frames` contributes one embedding per frame.
    """
    ref = _embed_for_frechet(embedder, reference_waves, sample_rate, frames)
    gen = _embed_for_frechet(embedder, generated_waves, sample_rate, frames)
    return frechet_distance_embeddings(ref, gen)


# The paper's names: FAD on VGGish embeddings, FD on PANNs CNN14 2048-d features.
fad = frechet_audio_distance
fd = frechet_audio_distance
