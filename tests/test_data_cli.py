"""The `data` command group: registers on a parent parser, runs standalone, refuses bad input in one line."""
import argparse
import subprocess
import sys
from pathlib import Path

from melfusion.cli import run_command as run
from melfusion.data.cli import add_data_commands, main

ROOT = Path(__file__).resolve().parents[1]


def test_the_data_group_registers_its_four_subcommands_on_a_parent_parser():
    parser = argparse.ArgumentParser(prog="melfusion")
    add_data_commands(parser.add_subparsers(dest="command"))
    for argv in (["data", "synth", "--n", "3", "--out", "x"], ["data", "check", "m.jsonl"],
                 ["data", "import-musiccaps", "--csv", "c", "--audio-dir", "a", "--image-dir", "i", "--out", "o"],
                 ["data", "import-melbench", "root", "--out", "o"]):
        args = parser.parse_args(argv)
        assert callable(args.func)
    args = parser.parse_args(["data", "synth", "--n", "0", "--out", "x"])
    assert run(args) == 2


def test_bad_input_is_one_error_line_exit_2_and_nothing_written(tmp_path, capsys):
    assert main(["synth", "--n", "0", "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert capsys.readouterr().err == "error: --n must be at least 1\n"
    assert not (tmp_path / "a").exists()
    assert main(["synth", "--n", "2", "--out", str(tmp_path / "b"), "--soundfont", str(tmp_path / "no.sf2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sound font not found") and err.count("\n") == 1
    assert not (tmp_path / "b").exists()
    assert main(["import-melbench", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.startswith("error: MeLBench folder not found")


def test_python_dash_m_runs_the_data_commands(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "melfusion.data", "synth", "--n", "2", "--out", str(tmp_path / "s"),
                           "--duration", "2", "--seed", "1", "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "2 records (2 made, 0 already there)" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "melfusion.data", "check", str(tmp_path / "s" / "manifest.jsonl")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and "result: OK" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "melfusion.data", "check", str(tmp_path / "none.jsonl")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


def test_ctrl_c_stops_cleanly_and_a_rerun_finishes_the_same_set(tmp_path):
    import os
    import signal
    import time

    from melfusion.data.synth import SynthConfig, synthesize

    out = tmp_path / "int"
    cmd = [sys.executable, "-m", "melfusion.data", "synth", "--n", "40", "--out", str(out), "--duration", "2",
           "--seed", "2", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: (signal.signal(signal.SIGINT, signal.SIG_DFL), os.setpgrp()))
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("audio/*.wav"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole process group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "error: interrupted (finished records are kept; rerun the same command to resume)"
    done = len(list(out.glob("audio/*.wav")))
    assert 3 <= done < 40 and not (out / "manifest.jsonl").exists()
    res = synthesize(40, out, SynthConfig(seed=2, duration_s=2.0), workers=2, progress=False)
    assert res["kept"] == done and res["made"] == 40 - done
    clean = tmp_path / "clean"
    synthesize(40, clean, SynthConfig(seed=2, duration_s=2.0), workers=2, progress=False)
    for p in sorted(clean.rglob("*")):
        if p.is_file():
            assert (out / p.relative_to(clean)).read_bytes() == p.read_bytes(), p.name
    assert not list(out.rglob(".tmp-*"))
