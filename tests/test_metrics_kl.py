"""Paired KL: hand computations, KL(p||p) = 0, positivity, audioldm_eval's conventions."""
import math

import numpy as np
import pytest
import torch

from melfusion.errors import MelFusionError
from melfusion.metrics.kl import kl_sigmoid_per_pair, kl_softmax_per_pair, paired_kl


def test_softmax_form_matches_a_hand_computation_in_the_reference_to_generated_direction():
    ref = np.log(np.array([[0.5, 0.25, 0.25]]))
    gen = np.log(np.array([[0.25, 0.5, 0.25]]))
    # KL(p || q) = 0.5 ln(0.5/0.25) + 0.25 ln(0.25/0.5) + 0 = 0.25 ln 2
    assert kl_softmax_per_pair(ref, gen)[0] == pytest.approx(0.25 * math.log(2), rel=1e-12)
    ref2 = np.log(np.array([[0.9, 0.1]]))
    gen2 = np.log(np.array([[0.5, 0.5]]))
    forward = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert kl_softmax_per_pair(ref2, gen2)[0] == pytest.approx(forward, rel=1e-12)
    assert kl_softmax_per_pair(gen2, ref2)[0] != pytest.approx(forward)  # direction matters


def test_sigmoid_form_is_the_positive_label_term_summed_over_labels():
    ref, gen = np.array([[0.0, 2.0]]), np.array([[1.0, -1.0]])
    s = lambda x: 1 / (1 + math.exp(-x))
    expected = sum(s(r) * math.log(s(r) / s(g)) for r, g in zip(ref[0], gen[0]))
    assert kl_sigmoid_per_pair(ref, gen)[0] == pytest.approx(expected, rel=1e-12)
    bern = sum(s(r) * math.log(s(r) / s(g)) + (1 - s(r)) * math.log((1 - s(r)) / (1 - s(g)))
               for r, g in zip(ref[0], gen[0]))
    assert kl_sigmoid_per_pair(ref, gen, bernoulli=True)[0] == pytest.approx(bern, rel=1e-12)


def test_with_the_toolbox_offset_it_equals_audioldm_evals_torch_formula():
    rng = np.random.default_rng(0)
    ref, gen = rng.normal(size=(6, 527)) * 3, rng.normal(size=(6, 527)) * 3
    r, g = torch.from_numpy(ref), torch.from_numpy(gen)
    soft = torch.nn.functional.kl_div((g.softmax(1) + 1e-6).log(), r.softmax(1), reduction="sum") / len(g)
    sig = torch.nn.functional.kl_div((g.sigmoid() + 1e-6).log(), r.sigmoid(), reduction="sum") / len(g)
    assert kl_softmax_per_pair(ref, gen, eps=1e-6).mean() == pytest.approx(float(soft), rel=1e-9)
    assert kl_sigmoid_per_pair(ref, gen, eps=1e-6).mean() == pytest.approx(float(sig), rel=1e-9)
    reported = paired_kl(ref, gen)
    assert reported == pytest.approx({"kl_softmax": float(soft), "kl_sigmoid": float(sig)}, rel=1e-9)
    # The offset only raises log q, so the exact divergence is larger.
    assert kl_softmax_per_pair(ref, gen).mean() > reported["kl_softmax"]


def test_kl_of_a_distribution_with_itself_is_zero_and_otherwise_positive():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 10)) * 4
    assert np.allclose(kl_softmax_per_pair(x, x), 0.0, atol=1e-12)
    assert np.allclose(kl_sigmoid_per_pair(x, x, bernoulli=True), 0.0, atol=1e-12)
    y = rng.normal(size=(20, 10)) * 4
    assert (kl_softmax_per_pair(x, y) > 0).all()
    assert (kl_sigmoid_per_pair(x, y, bernoulli=True) > 0).all()


def test_extreme_logits_stay_finite():
    ref, gen = np.array([[800.0, -800.0]]), np.array([[-800.0, 800.0]])
    assert np.isfinite(kl_softmax_per_pair(ref, gen)).all()
    assert kl_softmax_per_pair(ref, gen)[0] == pytest.approx(1600.0, rel=1e-9)
    assert np.isfinite(kl_sigmoid_per_pair(ref, gen, bernoulli=True)).all()


def test_unpaired_inputs_are_refused():
    with pytest.raises(MelFusionError, match="one generated clip per reference"):
        paired_kl(np.zeros((3, 5)), np.zeros((2, 5)))
    with pytest.raises(MelFusionError, match="2-D"):
        paired_kl(np.zeros(5), np.zeros(5))
