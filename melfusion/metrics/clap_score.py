"""CLAP score: how well generated audio matches its text, as the mean cosine similarity of
matched (text i, audio i) embeddings from a text-audio contrastive model (CLAP).

    CLAP = (1/n) sum_i cos(t_i, a_i)

No clipping at zero and no x100 scaling (conventions some papers add); the figure lies in [-1, 1].
"""
from __future__ import annotations

import numpy as np

from melfusion.errors import MelFusionError


def clap_scores(text_embeddings, audio_embeddings) -> np.ndarray:
    """`(n,)` cosine similarity of each matched row pair of `(n, d)` text and audio embeddings."""
    t = np.asarray(text_embeddings, dtype=np.float64)
    a = np.asarray(audio_embeddings, dtype=np.float64)
    if t.ndim != 2 or t.shape != a.shape:
        raise MelFusionError(f"CLAP score needs matched (n, d) text and audio embeddings, got {t.shape} and {a.shape}")
    if t.shape[0] == 0:
        raise MelFusionError("CLAP score needs at least one pair")
    tn = np.linalg.norm(t, axis=1)
    an = np.linalg.norm(a, axis=1)
    if (tn == 0).any() or (an == 0).any():
        raise MelFusionError("CLAP score got an all-zero embedding; cosine similarity is undefined")
    return (t * a).sum(axis=1) / (tn * an)


def clap_score(text_embeddings, audio_embeddings) -> float:
    """Mean cosine similarity over matched pairs."""
    return float(clap_scores(text_embeddings, audio_embeddings).mean())


def clap_score_from_model(text_audio_model, texts, waves, sample_rate: int | None = None) -> float:
    """CLAP score with a `TextAudioModel`; text i describes clip i."""
    if len(texts) != len(waves):
        raise MelFusionError(f"CLAP score needs one text per clip: {len(texts)} texts, {len(waves)} clips")
    return clap_score(text_audio_model.embed_text(texts), text_audio_model.embed_audio(waves, sample_rate=sample_rate))
