"""The `data` command group: registers on a parent parser, runs standalone, refuses bad input in one line."""
import argparse
import subprocess
import sys
from pathlib import Path

from melfusion.data.cli import add_data_commands, main, run

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
