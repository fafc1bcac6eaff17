"""IMSM as the paper defines it, and the CLAP score."""
import numpy as np
import pytest

from melfusion.errors import MelFusionError
from melfusion.metrics.clap_score import clap_score, clap_scores
from melfusion.metrics.imsm import imsm, imsm_from_models, imsm_matrix, imsm_scores, similarity_logits


def test_imsm_matches_a_hand_computed_two_by_two_example():
    it = np.log(np.array([[0.8, 0.2], [0.3, 0.7]]))  # softmax of these logits is the probabilities
    at = np.log(np.array([[0.6, 0.4], [0.1, 0.9]]))
    s = np.array([[0.8 * 0.6 + 0.2 * 0.4, 0.8 * 0.1 + 0.2 * 0.9],
                  [0.3 * 0.6 + 0.7 * 0.4, 0.3 * 0.1 + 0.7 * 0.9]])  # [[0.56, 0.26], [0.46, 0.66]]
    expected = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    assert np.allclose(imsm_matrix(it, at), expected, atol=1e-14)
    assert imsm_scores(it, at) == pytest.approx([expected[0, 0], expected[1, 1]], abs=1e-14)
    # e^0.56 / (e^0.56 + e^0.26) and e^0.66 / (e^0.46 + e^0.66)
    assert imsm(it, at) == pytest.approx((1 / (1 + np.exp(-0.3)) + 1 / (1 + np.exp(-0.2))) / 2, abs=1e-14)


def test_certain_and_agreeing_models_reach_the_ceiling_e_over_e_plus_n_minus_1():
    n = 5
    certain = np.eye(n) * 1000.0  # softmax over texts is one-hot on the matching text
    assert imsm_scores(certain, certain) == pytest.approx(np.full(n, np.e / (np.e + n - 1)), rel=1e-12)


def test_rows_are_distributions_over_the_audio_clips():
    rng = np.random.default_rng(0)
    m = imsm_matrix(rng.normal(size=(5, 7)), rng.normal(size=(4, 7)))
    assert m.shape == (5, 4)
    assert np.allclose(m.sum(axis=1), 1.0)


def test_aligned_embeddings_score_higher_than_shuffled_ones():
    rng = np.random.default_rng(1)
    n, d = 8, 16
    texts = rng.normal(size=(n, d))
    images = texts + 0.1 * rng.normal(size=(n, d))
    audios = texts + 0.1 * rng.normal(size=(n, d))
    it = similarity_logits(images, texts, 100.0)
    aligned = imsm(it, similarity_logits(audios, texts, 100.0))
    shuffled = imsm(it, similarity_logits(audios[np.roll(np.arange(n), 1)], texts, 100.0))
    assert aligned > 1.0 / n > shuffled


def test_imsm_refuses_logits_over_different_texts():
    with pytest.raises(MelFusionError, match="same texts"):
        imsm_matrix(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(MelFusionError, match="as many images as audio"):
        imsm_scores(np.zeros((2, 3)), np.zeros((3, 3)))


class Fixed:
    """A stand-in contrastive model with fixed embeddings."""
    logit_scale = 10.0

    def __init__(self, table):
        self.table = table

    def embed_text(self, texts):
        return np.stack([self.table[t] for t in texts])

    embed_image = embed_text

    def embed_audio(self, waves, sample_rate=None):
        return np.stack([self.table[w] for w in waves])


def test_imsm_from_models_uses_each_models_logit_scale_and_embeddings():
    table = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0]), "x": np.array([1.0, 0.2]), "y": np.array([0.1, 1.0])}
    model = Fixed(table)
    out = imsm_from_models(model, model, ["x", "y"], ["a", "b"], ["x", "y"])
    it = similarity_logits(np.stack([table["x"], table["y"]]), np.stack([table["a"], table["b"]]), 10.0)
    assert out["imsm"] == pytest.approx(imsm(it, it))
    assert out["scores"].shape == (2,)


def test_clap_score_is_the_mean_cosine_of_matched_pairs():
    t = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    a = np.array([[3.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    assert clap_scores(t, a) == pytest.approx([1.0, 0.0, -1.0])
    assert clap_score(t, a) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(MelFusionError, match="matched"):
        clap_score(t, a[:2])
    with pytest.raises(MelFusionError, match="all-zero"):
        clap_score(t, np.zeros_like(a))
