"""scripts/latent_signal.py: the variance of a label's group means, the figure behind key conditioning."""
import importlib.util
from pathlib import Path

import pytest
import torch

SPEC = importlib.util.spec_from_file_location("latent_signal", Path(__file__).parents[1] / "scripts" / "latent_signal.py")
latent_signal = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(latent_signal)


def test_group_means_one_apart_give_a_quarter_and_equal_means_give_nothing():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4000, 3, 5, generator=g) * 0.1
    labels = ["a", "b"] * 2000
    shift = torch.tensor([0.0, 1.0] * 2000)[:, None, None]
    # Two equal groups whose means differ by 1: each mean is 0.5 from the overall one.
    assert latent_signal.between_share(noise + shift, labels) == pytest.approx(0.25, abs=0.01)
    assert latent_signal.between_share(noise, labels) < 1e-4
