"""The rule that picks the fine-tuned model's default image guidance on validation records."""
import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location(
    "pick_image_guidance", Path(__file__).parents[1] / "scripts" / "pick_image_guidance.py")
pick = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(pick)


def _row(scale, genre, mode, energy, fd):
    return {"scale": scale, "genre": genre, "mode": mode, "energy": energy, "fd": fd}


def test_the_largest_mode_plus_energy_wins_among_scales_that_keep_genre_and_fd():
    rows = [_row(3, 0.90, 0.55, 0.60, 30.0), _row(5, 0.88, 0.58, 0.70, 32.0), _row(8, 0.80, 0.60, 0.75, 40.0)]
    # 8 has the most mode + energy but its FD is 33% above the plain scale's: refused
    assert pick.choose(rows)["scale"] == 5
    rows[2]["fd"] = 32.9  # within 10%: now it wins
    assert pick.choose(rows)["scale"] == 8


def test_genre_below_75_percent_is_refused_and_ties_go_to_the_smaller_scale():
    rows = [_row(3, 0.90, 0.55, 0.60, 30.0), _row(5, 0.74, 0.90, 0.90, 30.0), _row(8, 0.90, 0.60, 0.55, 30.0)]
    assert pick.choose(rows)["scale"] == 3  # 5 loses its genre; 8 ties with 3 and is the larger
    rows[0]["genre"] = 0.70  # nothing passes: the plain scale stays
    rows[2]["genre"] = 0.70
    assert pick.choose(rows)["scale"] == 3
