"""IMSM, the image-music similarity of MeLFusion (CVPR 2024), computed through the texts.

With n matched triplets (image i, caption i, music i):

    P_IT = softmax over texts of the CLIP image-text logits   (n_images, n_texts)
    P_AT = softmax over texts of the CLAP audio-text logits   (n_audios, n_texts)
    IMSM = row-softmax(P_IT P_AT^T)                           (n_images, n_audios)

Row i of IMSM is image i's distribution over the audio clips; the score of pair i is IMSM[i, i]
and the reported figure is the mean of the diagonal. Logits are the models' own: the logit
scale times the cosine similarity. Because the entries of P_IT P_AT^T lie in [0, 1], the row
softmax keeps every score close to 1/n: compare IMSM only between runs with the same n.
"""
from __future__ import annotations

import numpy as np

from melfusion.errors import MelFusionError


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def imsm_matrix(image_text_logits, audio_text_logits) -> np.ndarray:
    """`(n_images, n_audios)` IMSM from CLIP `(n_images, n_texts)` and CLAP `(n_audios, n_texts)` logits."""
    it = np.asarray(image_text_logits, dtype=np.float64)
    at = np.asarray(audio_text_logits, dtype=np.float64)
    if it.ndim != 2 or at.ndim != 2:
        raise MelFusionError(f"IMSM needs 2-D logit matrices, got {it.shape} and {at.shape}")
    if it.shape[1] != at.shape[1]:
        raise MelFusionError(
            f"image-text and audio-text logits must range over the same texts: {it.shape[1]} vs {at.shape[1]}")
    if not (np.isfinite(it).all() and np.isfinite(at).all()):
        raise MelFusionError("IMSM logits contain NaN or infinite values")
    p_it = softmax(it, axis=1)
    p_at = softmax(at, axis=1)
    return softmax(p_it @ p_at.T, axis=1)


def imsm_scores(image_text_logits, audio_text_logits) -> np.ndarray:
    """`(n,)` IMSM score of each matched (image i, audio i) pair: the diagonal of the IMSM matrix."""
    m = imsm_matrix(image_text_logits, audio_text_logits)
    if m.shape[0] != m.shape[1]:
        raise MelFusionError(f"IMSM pair scores need as many images as audio clips: {m.shape[0]} vs {m.shape[1]}")
    return np.diag(m).copy()


def imsm(image_text_logits, audio_text_logits) -> float:
    """Mean IMSM over matched pairs."""
    return float(imsm_scores(image_text_logits, audio_text_logits).mean())


def similarity_logits(a, b, logit_scale: float) -> np.ndarray:
    """`logit_scale * cos(a_i, b_j)`: `(n_a, n_b)` contrastive logits from `(n_a, d)` and `(n_b, d)`."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(logit_scale) * (a @ b.T)


def imsm_from_models(image_text_model, text_audio_model, images, texts, waves,
                     sample_rate: int | None = None) -> dict:
    """IMSM of matched triplets with a CLIP-like `ImageTextModel` and a CLAP-like `TextAudioModel`.

    Returns {"imsm": mean score, "scores": per-pair scores (n,)}.
    """
    n = len(texts)
    if not (len(images) == n == len(waves)):
        raise MelFusionError(f"IMSM needs matched triplets: {len(images)} images, {n} texts, {len(waves)} clips")
    it = similarity_logits(image_text_model.embed_image(images), image_text_model.embed_text(texts),
                           image_text_model.logit_scale)
    at = similarity_logits(text_audio_model.embed_audio(waves, sample_rate=sample_rate),
                           text_audio_model.embed_text(texts), text_audio_model.logit_scale)
    scores = imsm_scores(it, at)
    return {"imsm": float(scores.mean()), "scores": scores}
