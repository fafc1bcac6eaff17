"""The held-out pictures: deterministic, labelled as drawn, and differing within a pair only in
what the label says."""
import numpy as np
import pytest

from melfusion.data import heldout
from melfusion.data.stats import LUMA


def _stats(img):
    a = np.asarray(img, dtype=np.float64) / 255.0
    lum = a @ LUMA
    edges = np.abs(np.diff(lum, axis=0))[:, :-1] + np.abs(np.diff(lum, axis=1))[:-1, :]
    return {"lum": lum.mean(), "red_minus_blue": (a[..., 0] - a[..., 2]).mean(), "edges": (edges > 0.1).mean(),
            "edge_map": edges > 0.1}


def test_drawn_pictures_are_reproducible_and_carry_their_labels():
    pics = heldout.pictures(seeds=1, photos=False)
    assert len(pics) == 4 * len(heldout.STYLES)
    again = heldout.pictures(seeds=1, photos=False)
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(pics, again))
    by = {(p.group, p.warm, p.busy): _stats(p.image) for p in pics}
    for style in heldout.STYLES:
        g = f"{style}-0"
        for busy in (True, False):
            w, c = by[(g, True, busy)], by[(g, False, busy)]
            assert w["lum"] > c["lum"] + 0.15 and w["red_minus_blue"] > c["red_minus_blue"] + 0.2, (style, busy)
        for warm in (True, False):
            assert by[(g, warm, True)]["edges"] > by[(g, warm, False)]["edges"] + 0.05, (style, warm)
        # warm and cool share the geometry: the same edges where the palette does not merge two colours
        a, b = by[(g, True, True)]["edge_map"], by[(g, False, True)]["edge_map"]
        assert (a & b).sum() / max(1, (a | b).sum()) > 0.4, style


def test_graded_photographs_carry_their_labels():
    pytest.importorskip("skimage")
    img = heldout.photo("coffee")
    assert img.size == (heldout.SIZE, heldout.SIZE)
    s = {(w, b): _stats(heldout.grade(img, w, b)) for w in (True, False) for b in (True, False)}
    for busy in (True, False):
        assert s[(True, busy)]["lum"] > s[(False, busy)]["lum"] + 0.25
        assert s[(True, busy)]["red_minus_blue"] > s[(False, busy)]["red_minus_blue"] + 0.3
    for warm in (True, False):
        assert s[(warm, True)]["edges"] > s[(warm, False)]["edges"] + 0.05
