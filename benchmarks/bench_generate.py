"""Wall time and peak memory of `generate` (10 s of audio by default): cold and warm, split by
stage, against the code before the speed work (issue 13) measured in the same run.

    .venv/bin/python benchmarks/bench_generate.py [--before REV] [--cold 5] [--rounds 3] [--repeats 3] [--duration 10] [--no-bytecode]
    .venv/bin/python benchmarks/bench_generate.py --presets tiny small      # warm only, random weights
    .venv/bin/python benchmarks/bench_generate.py --presets default runs/small/music-finetune/model --before ''
                                               # a saved model beside the shipped one, cold and warm

Cold: a fresh process runs `melfusion generate` on the bundled example post, from the
interpreter's start to the WAV on disk (what a user of the README's command waits, less
bin/setup's check). Warm: the model loaded and warmed up (one short call) in one process, then
the pipeline call timed, median over repeats and then over `--rounds` processes, with its split (text, inversion, denoising,
vocoding). "before" is the same measurement on the code of revision REV (default d162090, the
last commit before issue 13), checked out in a temporary git worktree and run with the same
virtual environment; the two alternate, so machine noise falls on both. These machines are
noisy: read the ratio, which holds, more than the absolute figure, which moves.

Each measurement runs in its own process so its peak resident memory is its own.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "An acoustic folk song for an evening on the beach: fingerpicked guitar, soft harmonica and gentle percussion"
BEFORE = "d162090"


def measure(preset: str, duration: float, repeats: int, steps: int | None) -> dict:
    import torch

    from melfusion import presets
    from melfusion.images import load_image
    from melfusion.loading import load_model

    if preset == "default" or Path(preset).is_dir():
        pipe = load_model(None if preset == "default" else preset)
    else:
        pipe = presets.build(preset)
    image = load_image(str(ROOT / "examples/beach-post.png"))
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pipe(image=image, prompt=PROMPT, duration_s=1.0, num_inference_steps=2, progress=False)  # warm-up
    runs = []
    for i in range(repeats):
        clock = time.perf_counter()
        out = pipe(image=image, prompt=PROMPT, duration_s=duration, num_inference_steps=steps,
                   generator=torch.Generator().manual_seed(i), progress=False)
        runs.append(dict(out.timings, wall=time.perf_counter() - clock))
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    d = pipe.defaults
    return dict(preset=preset, duration_s=duration, steps=steps or d["num_inference_steps"],
                solver=d.get("solver", "ddim"), precision=d.get("precision", "fp32"),
                inversion_steps=d.get("inversion_steps") or steps or d["num_inference_steps"],
                threads=torch.get_num_threads(), repeats=repeats, **{f"{k}_s": round(v, 3) for k, v in median.items()},
                peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                model_rss_mb=round(rss_model, 1))


def _env(tree: Path | None) -> dict:
    env = dict(os.environ)
    if tree is not None:  # the worktree's melfusion ahead of the installed (editable) one
        env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def saved(preset: str) -> bool:
    """The shipped default or a saved model folder (not a randomly initialised preset)."""
    return preset == "default" or Path(preset).is_dir()


def cold_once(tree: Path | None, duration: float, out: Path, model: str = "default") -> float:
    cmd = [sys.executable, "-m", "melfusion.cli", "generate", "--image", str(ROOT / "examples/beach-post.png"),
           "--text", PROMPT, "--out", str(out), "--duration", str(duration), "--quiet"]
    if model != "default":
        cmd += ["--model", str(Path(model).resolve())]
    clock = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tree), cwd=str(tree or ROOT))
    wall = time.perf_counter() - clock
    if proc.returncode != 0 or not out.is_file():
        sys.exit(f"cold generate failed ({'before' if tree else 'now'}):\n{proc.stderr[-2000:]}")
    out.unlink()
    return wall


def warm_once(tree: Path | None, preset: str, duration: float, repeats: int, steps: int | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", preset, "--duration", str(duration),
           "--repeats", str(repeats)] + (["--steps", str(steps)] if steps else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tree), cwd=str(tree or ROOT))
    if proc.returncode != 0:
        sys.exit(f"{preset} failed ({'before' if tree else 'now'}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict]) -> dict:
    """Per figure, the median over processes (each already the median of its calls)."""
    out = dict(runs[0])
    for k, v in runs[0].items():
        if k.endswith("_s") or k.endswith("_mb"):
            out[k] = round(statistics.median(r[k] for r in runs), 3)
    return out


def table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["default"])
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3, help="warm calls per process (median)")
    ap.add_argument("--rounds", type=int, default=3, help="warm processes per code version (median of their medians)")
    ap.add_argument("--cold", type=int, default=5, help="fresh processes per code version (median)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: each model's)")
    ap.add_argument("--before", default=BEFORE, help="the revision to compare with ('' for none)")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="time cold starts without compiling melfusion's sources first (see below)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.duration, args.repeats, args.steps)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        trees: dict[str, Path | None] = {"now": None}
        if args.before:
            wt = Path(tmp) / "before"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(wt), args.before],
                           check=True, capture_output=True)
            trees = {"before": wt, "now": None}
        if not args.no_bytecode:
            # Python caches a module's bytecode on its first import, unless PYTHONDONTWRITEBYTECODE
            # is set (it is on these machines: every start then recompiles melfusion's sources,
            # 50-100 ms). bin/setup compiles them, as pip does a wheel's at install; both trees
            # get the same here.
            for tree in trees.values():
                subprocess.run([sys.executable, "-m", "compileall", "-q", str((tree or ROOT) / "melfusion")],
                               check=True, capture_output=True)
        try:
            rounds: dict[tuple, list] = {}
            for _ in range(args.rounds):  # processes alternate, so a noisy spell falls on both
                for preset in args.presets:
                    for label, tree in trees.items():
                        if tree is not None and preset != "default":
                            continue  # random presets: their code path is the same before and after
                        rounds.setdefault((label, preset), []).append(
                            warm_once(tree, preset, args.duration, args.repeats, args.steps))
            warm = [dict(code=label, **median_of(runs)) for (label, _), runs in rounds.items()]
            cold = {}
            for _ in range(args.cold):
                for preset in filter(saved, args.presets):
                    for label, tree in trees.items():
                        if tree is not None and preset != "default":
                            continue  # the code before reads only the model it shipped with
                        name = label if preset == "default" else f"{label}: {preset}"
                        cold.setdefault(name, []).append(cold_once(tree, args.duration, Path(tmp) / "cold.wav", preset))
        finally:
            if args.before:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(Path(tmp) / "before")],
                               capture_output=True)
    cols = ["code", "preset", "solver", "steps", "precision", "inversion_steps", "text_s", "inversion_s",
            "denoising_s", "vocoding_s", "wall_s", "peak_rss_mb"]
    print(f"warm: {args.duration:g} s of audio, median of {args.rounds} processes x {args.repeats} calls, "
          f"{warm[0]['threads']} threads")
    print(table(warm, cols))
    by = {r["code"]: r for r in warm if r["preset"] == "default"}
    if "before" in by and "now" in by:
        print(f"warm ratio before/now: {by['before']['wall_s'] / by['now']['wall_s']:.2f}x")
    if any(cold.values()):
        print(f"\ncold: fresh process to the WAV on disk, median of {args.cold}, melfusion's bytecode "
              + ("not compiled beforehand" if args.no_bytecode else "compiled beforehand (as after bin/setup)"))
        rows = [dict(code=k, median_s=round(statistics.median(v), 2), min_s=round(min(v), 2), max_s=round(max(v), 2))
                for k, v in cold.items()]
        print(table(rows, ["code", "median_s", "min_s", "max_s"]))
        if "before" in cold:
            print(f"cold ratio before/now: {statistics.median(cold['before']) / statistics.median(cold['now']):.2f}x")


if __name__ == "__main__":
    main()
