"""scripts/third_clarity.py reads a chord's third from audio, relative to a tonic."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import soundfile as sf

SPEC = importlib.util.spec_from_file_location("third_clarity", Path(__file__).parents[1] / "scripts" / "third_clarity.py")
third = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(third)


def _chord(path, midi_notes, rate=16000, seconds=2.0):
    t = np.arange(int(rate * seconds)) / rate
    wave = sum(np.sin(2 * np.pi * 440 * 2 ** ((m - 69) / 12) * t) for m in midi_notes) / len(midi_notes)
    sf.write(path, (0.5 * wave).astype(np.float32), rate)


def test_a_major_and_a_minor_triad_read_as_such_relative_to_their_tonic(tmp_path, monkeypatch):
    folder = tmp_path / "clips"
    folder.mkdir()
    _chord(folder / "a.wav", [62, 66, 69])   # D major: D F# A
    _chord(folder / "b.wav", [62, 65, 69])   # D minor: D F A
    _chord(folder / "c.wav", [67, 71, 74])   # G major, recorded as G minor: the third is wrong
    pa = np.roll(third.profile(folder / "a.wav"), -2)
    pb = np.roll(third.profile(folder / "b.wav"), -2)
    assert pa[4] > 3 * pa[3] and pb[3] > 3 * pb[4]
    records = [{"id": "a", "split": "val", "key": "D major", "mode": "major"},
               {"id": "b", "split": "val", "key": "D minor", "mode": "minor"},
               {"id": "c", "split": "val", "key": "G minor", "mode": "minor"}]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    monkeypatch.setattr("sys.argv", ["third_clarity.py", str(folder), "--manifest", str(manifest),
                                     "--out", str(tmp_path / "r.json")])
    assert third.main() == 0
    row = json.loads((tmp_path / "r.json").read_text())[str(folder)]
    assert row["n"] == 3 and abs(row["third_follows"] - 2 / 3) < 1e-9 and row["abs_contrast"] > 0.5
