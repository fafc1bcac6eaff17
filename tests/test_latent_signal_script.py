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


ROW = importlib.util.spec_from_file_location("row_probe", Path(__file__).parents[1] / "scripts" / "row_probe.py")
row_probe = importlib.util.module_from_spec(ROW)
ROW.loader.exec_module(row_probe)


def test_the_row_probe_names_rows_from_features_that_hold_them_and_not_from_noise():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(6, 8, 20, 16, generator=g)
    coded = noise.clone()
    coded[:, :2] += torch.stack([torch.cos(torch.arange(16) * 0.4), torch.sin(torch.arange(16) * 0.4)])[None, :, None, :] * 5
    coded[:, 2:4] += torch.stack([torch.cos(torch.arange(16) * 1.3), torch.sin(torch.arange(16) * 1.3)])[None, :, None, :] * 5
    acc, inner, near = row_probe.probe_accuracy(coded, 16)
    assert acc > 0.6 and near >= inner
    acc_noise, _, _ = row_probe.probe_accuracy(noise, 16)
    assert acc_noise < 0.15
