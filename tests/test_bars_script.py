"""scripts/bars_small.py: the bars and the paired sign test over two evaluate reports."""
import importlib.util
import json
import math
from pathlib import Path

SPEC = importlib.util.spec_from_file_location("bars_small", Path(__file__).parents[1] / "scripts" / "bars_small.py")
bars_small = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bars_small)


def _reports(tmp_path, a_right: int, b_right: int, both: int, neither: int):
    """Two reports over the same records whose mode predictions agree with the truth as asked."""
    n = a_right + b_right + both + neither
    records = [{"id": f"r{i}", "mode": "major"} for i in range(n)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    a, b = {}, {}
    for i in range(n):
        ok_a = i < a_right or a_right + b_right <= i < a_right + b_right + both
        ok_b = a_right <= i < a_right + b_right + both
        a[f"r{i}"] = {"mode": "major" if ok_a else "minor"}
        b[f"r{i}"] = {"mode": "major" if ok_b else "minor"}
    return {"reference": str(manifest), "predictions": a}, {"reference": str(manifest), "predictions": b}


def test_paired_counts_the_discordant_records_and_gives_the_exact_sign_test(tmp_path):
    a, b = _reports(tmp_path, a_right=10, b_right=2, both=5, neither=3)
    right_a, right_b, shared, p = bars_small.paired(a, b, "mode")
    assert (right_a, right_b, shared) == (10, 2, 20)
    # Two-sided binomial(12, 1/2) tail at 2: 2 (1 + 12 + 66) / 4096.
    assert math.isclose(p, 2 * 79 / 4096, rel_tol=1e-12)
    assert bars_small.paired(b, a, "mode")[:2] == (2, 10)
    # Balanced disagreement is no evidence either way; no disagreement gives p = 1.
    assert bars_small.paired(*_reports(tmp_path, 4, 4, 1, 1), "mode")[3] == 1.0
    assert bars_small.paired(*_reports(tmp_path, 0, 0, 6, 0), "mode")[3] == 1.0


def test_paired_needs_per_record_predictions(tmp_path):
    a, b = _reports(tmp_path, 1, 1, 1, 1)
    assert bars_small.paired(a, {"reference": a["reference"]}, "mode") is None


def test_bars_compare_the_model_with_the_baseline_and_the_control():
    def report(genre, mode, energy, fad, fd, n=300):
        return {"accuracy": {"genre": genre, "mode": mode, "energy": energy}, "fad": fad, "fd": fd, "n": n}

    model, text = report(0.62, 0.70, 0.80, 40.0, 60.0), report(0.67, 0.50, 0.60, 41.0, 59.0)
    shuffled = report(0.6, 0.5, 0.5, 45.0, 70.0, n=150)
    result = {name: ok for name, ok, _ in bars_small.bars(model, text, shuffled)}
    assert result["genre >= 60%"] and result["energy >= 75%"] and result["mode >= 65%"]
    assert result["energy >= text-only + 15 points"] and result["mode >= text-only + 15 points"]
    assert result["FAD below text-only"] and not result["FD below text-only"]
    assert result["shuffled images worse on mode"] and result["shuffled images worse on energy"]
    # The control is compared with the model on the control's own records when given.
    control = report(0.6, 0.45, 0.45, 40.0, 60.0, n=150)
    result = {name: ok for name, ok, _ in bars_small.bars(model, text, shuffled, control)}
    assert not result["shuffled images worse on mode"] and not result["shuffled images worse on energy"]


def test_issue_12_bars_ask_more_and_hold_the_control_near_text_only():
    def report(genre, mode, energy, fad, fd, n=300):
        return {"accuracy": {"genre": genre, "mode": mode, "energy": energy}, "fad": fad, "fd": fd, "n": n}

    text = report(0.78, 0.52, 0.58, 25.0, 35.0)
    model = report(0.80, 0.72, 0.82, 19.0, 29.0)
    shuffled = report(0.79, 0.55, 0.56, 24.0, 33.0)
    result = {name: ok for name, ok, _ in bars_small.bars_12(model, text, shuffled)}
    assert all(result.values()), result
    assert len(result) == 11
    # Issue 5's bars would pass a model that misses issue 12's: mode 68%, energy 76%, FD 31.
    weaker = report(0.80, 0.68, 0.76, 19.0, 31.0)
    result = {name: ok for name, ok, _ in bars_small.bars_12(weaker, text, shuffled)}
    assert not result["mode >= 70%"] and not result["energy >= 80%"] and not result["FD <= 30"]
    assert result["mode >= text-only + 15 points"] and not result["energy >= text-only + 20 points"]
    assert result["FAD <= 20"] and result["FD below text-only"]
    # A control that keeps the picture's effect (shuffling changed nothing) misses.
    kept = report(0.79, 0.70, 0.80, 20.0, 30.0)
    result = {name: ok for name, ok, _ in bars_small.bars_12(model, text, kept)}
    assert not result["shuffled images within 5 points of text-only on mode"]
    assert not result["shuffled images within 5 points of text-only on energy"]


def test_the_new_model_beats_the_shipped_default_only_where_it_is_strictly_better():
    new = {"accuracy": {"genre": 0.99, "mode": 0.52, "energy": 0.70}, "fd": 28.0, "fad": 14.0}
    old = {"accuracy": {"genre": 0.62, "mode": 0.53, "energy": 0.70}, "fd": 64.6, "fad": 14.0}
    rows = {name.split()[0]: ok for name, ok, _ in bars_small.against_shipped(new, old)}
    assert rows == {"genre": True, "mode": False, "energy": False, "FD": True, "FAD": False}
