"""`melfusion data check`: a clean set passes; each injected fault is reported with its line and id."""
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from melfusion.data.check import check_manifest
from melfusion.data.cli import main
from melfusion.data.synth import SynthConfig, synthesize


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    out = tmp_path_factory.mktemp("check") / "set"
    synthesize(15, out, SynthConfig(seed=11), workers=2, progress=False)
    return out


def test_a_clean_set_passes_with_a_readable_summary(clean, capsys):
    rep = check_manifest(clean / "manifest.jsonl")
    assert rep.ok and rep.records == 15 and not rep.warnings
    assert len(rep.durations) == 15 and abs(np.mean(rep.durations) - 10.0) < 1e-6
    assert main(["check", str(clean / "manifest.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "result: OK" in out and "duration: min 10.00 s" in out and "jazz" in out


def test_injected_faults_are_each_reported_with_line_number_and_id(clean, tmp_path, capsys):
    out = tmp_path / "bad"
    shutil.copytree(clean, out)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    rate = 16000
    # line 2: missing audio file
    (out / recs[1]["audio"]).unlink()
    # line 3: stereo file; line 4: 44.1 kHz; line 5: silent; line 6: clipped
    sf.write(out / recs[2]["audio"], np.zeros((rate, 2)) + 0.1, rate, subtype="PCM_16")
    sf.write(out / recs[3]["audio"], 0.1 * np.sin(np.arange(44100) / 10), 44100, subtype="PCM_16")
    sf.write(out / recs[4]["audio"], np.zeros(rate), rate, subtype="PCM_16")
    sf.write(out / recs[5]["audio"], np.sign(np.sin(np.arange(rate) / 5)), rate, subtype="PCM_16")
    # line 7: unreadable image
    (out / recs[6]["image"]).write_bytes(b"not a png")
    # line 8: same melody as line 9 but another split (reported on line 9, naming line 8)
    recs[7]["melody_id"] = recs[8]["melody_id"]
    recs[7]["split"] = "test" if recs[8]["split"] != "test" else "val"
    # line 10: audio shared with line 11 across splits (reported on line 11)
    recs[9]["audio"] = recs[10]["audio"]
    recs[9]["melody_id"] = "x"
    recs[9]["split"] = "test" if recs[10]["split"] != "test" else "val"
    lines = [json.dumps(r) for r in recs]
    lines[11] = lines[11][:-5]                                # line 12: broken JSON
    lines[12] = json.dumps({k: v for k, v in recs[12].items() if k != "caption"})  # line 13: no caption
    lines[13] = json.dumps(dict(recs[13], id=recs[0]["id"]))  # line 14: duplicate id
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")

    rep = check_manifest(out / "manifest.jsonl")
    text = "\n".join(rep.errors)
    ids = [r["id"] for r in recs]
    expect = {
        2: "audio file missing", 3: "2 channels", 4: "sample rate 44100 Hz", 5: "silent audio", 6: "clipped audio",
        7: "image file unreadable", 9: "at line 8 (id", 11: "at line 10 (id", 12: "not valid JSON", 13: "caption",
        14: "duplicate id (first on line 1)",
    }
    for line, what in expect.items():
        hits = [e for e in rep.errors if e.startswith(f"line {line} ") or e.startswith(f"line {line}:")]
        assert any(what in h for h in hits), (line, what, text)
        if line not in (12, 13, 14):
            assert any(f"(id {ids[line - 1]})" in h for h in hits)
    assert len(rep.errors) == len(expect)
    assert main(["check", str(out / "manifest.jsonl")]) == 1
    printed = capsys.readouterr().out
    assert "FAILED (11 errors)" in printed and "line 5 (id " in printed


def test_check_of_a_missing_manifest_is_a_one_line_error(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: manifest not found") and err.count("\n") == 1
