"""Paired KL divergence between a classifier's label distributions on reference and generated clips.

Direction and forms follow audioldm_eval (the AudioLDM / TANGO evaluation toolbox), so numbers
are comparable with the literature. For pair i, with classifier logits r_i (reference clip) and
g_i (the clip generated from the same prompt):

- softmax form: KL(softmax(r_i) || softmax(g_i)) = sum_k p_k (log p_k - log q_k)
- sigmoid form: sum_k s(r_ik) (log s(r_ik) - log s(g_ik)), s the logistic function. This is what
  audioldm_eval reports as KL_Sigmoid: the positive-label term only, not a true divergence
  (it can be negative). `bernoulli=True` adds the complement term
  (1 - s(r)) (log(1 - s(r)) - log(1 - s(g))), giving the per-label Bernoulli KL, >= 0.

Both are summed over labels and averaged over pairs. audioldm_eval takes log(q + 1e-6), and with
527 AudioSet labels that offset is not negligible (most softmax probabilities are far below
1e-6), so `paired_kl`, the reported figures, keeps it (`eps=AUDIOLDM_EVAL_EPS`). The per-pair
functions default to the exact divergence (`eps=0`: log-softmax / log-sigmoid in float64).
"""
from __future__ import annotations

import numpy as np

from melfusion.errors import MelFusionError

AUDIOLDM_EVAL_EPS = 1e-6


def _paired_logits(reference, generated) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(reference, dtype=np.float64)
    g = np.asarray(generated, dtype=np.float64)
    if r.ndim != 2 or g.ndim != 2:
        raise MelFusionError(f"label logits must be 2-D (clips, labels), got {r.shape} and {g.shape}")
    if r.shape != g.shape:
        raise MelFusionError(f"paired KL needs one generated clip per reference clip: shapes {r.shape} vs {g.shape}")
    if r.shape[0] == 0:
        raise MelFusionError("paired KL needs at least one pair")
    if not (np.isfinite(r).all() and np.isfinite(g).all()):
        raise MelFusionError("label logits contain NaN or infinite values")
    return r, g


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    """log(1 / (1 + e^-x)), stable for large |x|."""
    return -np.logaddexp(0.0, -x)


def kl_softmax_per_pair(reference_logits, generated_logits, eps: float = 0.0) -> np.ndarray:
    """`(n,)` KL(softmax(ref_i) || softmax(gen_i)) for each pair, in nats."""
    r, g = _paired_logits(reference_logits, generated_logits)
    log_p = log_softmax(r)
    p = np.exp(log_p)
    log_q = log_softmax(g) if eps == 0.0 else np.log(np.exp(log_softmax(g)) + eps)
    return (p * (log_p - log_q)).sum(axis=-1)


def kl_sigmoid_per_pair(reference_logits, generated_logits, bernoulli: bool = False, eps: float = 0.0) -> np.ndarray:
    """`(n,)` sigmoid-form KL per pair, summed over labels (see the module docstring)."""
    r, g = _paired_logits(reference_logits, generated_logits)
    log_p, log_q = log_sigmoid(r), log_sigmoid(g)
    if eps:
        log_q = np.log(np.exp(log_q) + eps)
    p = np.exp(log_p)
    value = p * (log_p - log_q)
    if bernoulli:
        # log(1 - s(x)) = log s(-x)
        value = value + (1.0 - p) * (log_sigmoid(-r) - log_sigmoid(-g))
    return value.sum(axis=-1)


def paired_kl(reference_logits, generated_logits, eps: float = AUDIOLDM_EVAL_EPS) -> dict[str, float]:
    """The two figures audioldm_eval reports (KL, KL_Sigmoid): mean over pairs, its 1e-6 offset kept."""
    return {
        "kl_softmax": float(kl_softmax_per_pair(reference_logits, generated_logits, eps=eps).mean()),
        "kl_sigmoid": float(kl_sigmoid_per_pair(reference_logits, generated_logits, eps=eps).mean()),
    }


def paired_kl_from_waves(classifier, reference_waves, generated_waves, sample_rate: int | None = None) -> dict[str, float]:
    """Paired KL with an `AudioClassifier` (e.g. PANNs CNN14); wave i of each list share a prompt."""
    if len(reference_waves) != len(generated_waves):
        raise MelFusionError(
            f"paired KL needs as many generated clips as reference clips: {len(generated_waves)} vs {len(reference_waves)}")
    ref = classifier.label_logits(reference_waves, sample_rate=sample_rate)
    gen = classifier.label_logits(generated_waves, sample_rate=sample_rate)
    return paired_kl(ref, gen)
