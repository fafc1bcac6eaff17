"""scripts/shuffled_control.py reads a shuffled-image set against its own and its borrowed labels."""
import importlib.util
import json
import sys
from pathlib import Path

from melfusion.metrics.cli import shuffled_images

SPEC = importlib.util.spec_from_file_location("shuffled_control",
                                              Path(__file__).parents[1] / "scripts" / "shuffled_control.py")
shuffled_control = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(shuffled_control)


def _row(out: str, label: str) -> list[float]:
    line = next(l for l in out.splitlines() if l.startswith(f"| {label} |"))
    return [float(c.strip().rstrip("%")) for c in line.strip("|").split("|")[1:]]


def test_a_model_that_follows_the_borrowed_picture_scores_it_and_not_its_own(tmp_path, monkeypatch, capsys):
    ids = [f"r{i}" for i in range(8)]
    records = [dict(id=i, split="test", genre=("rock", "jazz")[k % 2], mode=("major", "minor")[(k // 2) % 2],
                    energy=("calm", "driving")[k // 4]) for k, i in enumerate(ids)]
    records.append(dict(id="v0", split="val", genre="pop", mode="major", energy="calm"))
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    by = {r["id"]: r for r in records}
    borrowed = shuffled_images(ids, 3)
    # genre from the caption (its own record), mode and energy from the borrowed picture
    predictions = {i: dict(genre=by[i]["genre"], mode=by[borrowed[i]]["mode"], energy=by[borrowed[i]]["energy"])
                   for i in ids}
    judges = tmp_path / "judges.json"
    judges.write_text(json.dumps({"predictions": predictions}))
    monkeypatch.setattr(sys, "argv", ["x", str(judges), "--seed", "3", "--manifest", str(manifest)])
    assert shuffled_control.main() == 0
    out = capsys.readouterr().out
    chance = {lab: 100 * sum(by[i][lab] == by[borrowed[i]][lab] for i in ids) / len(ids) for lab in ("mode", "energy")}
    for lab in ("mode", "energy"):
        own, other, agree = _row(out, lab)
        assert other == 100.0 and own == agree == chance[lab]
    own, other, agree = _row(out, "genre")
    assert own == 100.0 and other == agree < 100.0
