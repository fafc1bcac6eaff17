"""Frechet distance: closed forms, an independent scipy computation, and the refusals."""
import numpy as np
import pytest
import scipy.linalg

from melfusion.errors import MelFusionError
from melfusion.metrics.frechet import (fad, frechet_distance, frechet_distance_embeddings, gaussian_stats,
                                       trace_sqrt_product)


def scipy_frechet(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def test_diagonal_gaussians_match_the_closed_form_exactly():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    v1, v2 = rng.uniform(0.1, 3.0, 16), rng.uniform(0.1, 3.0, 16)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_zero_variance_dimensions_keep_the_closed_form():
    v1 = np.array([0.0, 2.0, 0.0, 1.0])
    v2 = np.array([1.0, 0.0, 0.0, 4.0])
    expected = ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(np.zeros(4), np.diag(v1), np.zeros(4), np.diag(v2)) == pytest.approx(expected, abs=1e-12)


def test_agrees_with_plain_scipy_sqrtm_on_random_full_covariances():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    b = rng.normal(size=(250, 12)) @ rng.normal(size=(12, 12)) + 0.5
    mine = frechet_distance_embeddings(a, b)
    ref = scipy_frechet(*gaussian_stats(a), *gaussian_stats(b))
    assert mine == pytest.approx(ref, rel=1e-6)


def test_trace_sqrt_is_symmetric_in_its_arguments_and_exact_for_equal_matrices():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 8))
    s1, s2 = x @ x.T, np.cov(rng.normal(size=(40, 8)), rowvar=False)
    assert trace_sqrt_product(s1, s2) == pytest.approx(trace_sqrt_product(s2, s1), rel=1e-9)
    assert trace_sqrt_product(s1, s1) == pytest.approx(np.trace(s1), rel=1e-10)


def test_identical_sets_give_zero_and_a_shift_gives_its_squared_length():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(50, 6))
    assert frechet_distance_embeddings(a, a) == pytest.approx(0.0, abs=1e-9)
    shift = np.array([1.0, -2.0, 0.0, 0.5, 0.0, 3.0])
    assert frechet_distance_embeddings(a, a + shift) == pytest.approx((shift ** 2).sum(), rel=1e-9)


def test_fewer_samples_than_dimensions_stays_real_finite_and_non_negative():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(5, 32)), rng.normal(size=(6, 32))
    value = frechet_distance_embeddings(a, b)
    assert np.isfinite(value) and value > 0


@pytest.mark.parametrize("a,b,words", [
    (np.zeros((1, 4)), np.zeros((3, 4)), "at least two samples"),
    (np.zeros((3, 4)), np.zeros((3, 5)), "differ in dimension"),
    (np.zeros(4), np.zeros((3, 4)), "2-D"),
    (np.full((3, 4), np.nan), np.zeros((3, 4)), "NaN"),
])
def test_bad_embeddings_are_refused_in_one_line(a, b, words):
    with pytest.raises(MelFusionError, match=words) as info:
        frechet_distance_embeddings(a, b)
    assert "\n" not in str(info.value)


def test_mismatched_statistics_are_refused():
    with pytest.raises(MelFusionError, match="matching dimensions"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


class FrameEmbedder:
    """Embeds a wave as its samples reshaped into 2-d frames; enough to check the plumbing."""
    sample_rate = 10

    def embed_frames(self, waves, sample_rate=None):
        return [np.asarray(w, np.float64).reshape(-1, 2) for w in waves]

    def embed(self, waves, sample_rate=None):
        return np.stack([f.mean(axis=0) for f in self.embed_frames(waves)])


def test_fad_pools_frame_embeddings_of_all_clips():
    rng = np.random.default_rng(5)
    ref = [rng.normal(size=20) for _ in range(3)]
    gen = [rng.normal(size=20) + 1 for _ in range(3)]
    expected = frechet_distance_embeddings(np.concatenate([r.reshape(-1, 2) for r in ref]),
                                           np.concatenate([g.reshape(-1, 2) for g in gen]))
    assert fad(FrameEmbedder(), ref, gen) == pytest.approx(expected, rel=1e-12)
    clip_level = fad(FrameEmbedder(), ref, gen, frames=False)
    assert clip_level != pytest.approx(expected)
