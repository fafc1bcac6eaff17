"""Issue 13, item 4: what each speed lever costs in quality, on validation records.

    .venv/bin/python benchmarks/speed_quality.py [--manifest data/synthmel-2000/manifest.jsonl]
        [--n 96] [--model DIR] [--out runs/eval/speed-quality] [--only NAME ...]

Every row composes the same N validation records (the same per-record seeds) with one setting
changed or several combined, scores them with the SynthMeL judges (`melfusion evaluate`) and
times the composing (seconds per clip of 10 s, in the same process that made them). The first
row is the shipped default's settings before the change: 12 DDIM steps, fp32, 16 Griffin-Lim
iterations. Each row is a
`generate-set` folder, so an interrupted run resumes; the table is printed and written as
`table.md` beside the folders.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROWS = {  # name: (solver, steps, precision, vocoder iterations[, guided steps])
    "ddim-12 fp32 gl16 (before)": ("ddim", 12, "fp32", 16),
    "ddim-12 fp32 gl32": ("ddim", 12, "fp32", 32),
    "ddim-12 bf16 gl32": ("ddim", 12, "bf16", 32),
    "dpm++2m-6 fp32 gl32": ("dpm++2m", 6, "fp32", 32),
    "unipc-6 fp32 gl32": ("unipc", 6, "fp32", 32),
    "dpm++2m-6 bf16 gl16": ("dpm++2m", 6, "bf16", 16),  # the music UNet and, since, the audio VAE decoder
    "dpm++2m-6 bf16+vae gl16": ("dpm++2m", 6, "bf16", 16),
    "unipc-6 bf16+vae gl16": ("unipc", 6, "bf16", 16),
    "dpm++2m-8 bf16 gl16": ("dpm++2m", 8, "bf16", 16),
    "dpm++2m-5 bf16+vae gl16": ("dpm++2m", 5, "bf16", 16),
    # guidance on the first N steps only (--guided-steps), the later ones one conditional pass
    "dpm++2m-6 bf16+vae gl16 guided-4": ("dpm++2m", 6, "bf16", 16, 4),
    "dpm++2m-6 bf16+vae gl16 guided-3": ("dpm++2m", 6, "bf16", 16, 3),
}


def slug(name: str) -> str:
    return name.split(" (")[0].replace(" ", "_").replace("+", "p")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", default="data/synthmel-2000/manifest.jsonl")
    ap.add_argument("--split", default="val")
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--out", default="runs/eval/speed-quality")
    ap.add_argument("--only", nargs="+", default=None, help="row names (default: all)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mf = [sys.executable, "-m", "melfusion.cli"]
    rows = {}
    for name, (solver, steps, precision, iters, *guided) in ROWS.items():
        if args.only and name not in args.only and slug(name) not in args.only:
            continue
        folder = out / slug(name)
        timing = folder / "timing.json"
        cmd = [*mf, "generate-set", "--manifest", args.manifest, "--split", args.split, "--limit", str(args.n),
               "--out", str(folder), "--solver", solver, "--steps", str(steps), "--precision", precision,
               "--vocoder-iters", str(iters), "--quiet"] + (["--model", args.model] if args.model else [])
        cmd += ["--guided-steps", str(guided[0])] if guided else []
        before = len(list(folder.glob("*.wav"))) if folder.is_dir() else 0
        clock = time.perf_counter()
        subprocess.run(cmd, check=True)
        made = len(list(folder.glob("*.wav"))) - before
        if made:
            # The process's start-up is in the figure once per row: about 1 s over N clips.
            timing.write_text(json.dumps({"clips": made, "seconds": time.perf_counter() - clock}))
        report = folder.with_suffix(".json")
        if not report.is_file():
            subprocess.run([*mf, "evaluate", "--generated", str(folder), "--reference", args.manifest,
                            "--split", args.split, "--subset", "--name", name, "--out", str(report)],
                           check=True, stdout=subprocess.DEVNULL)
        rows[name] = (json.loads(report.read_text()), json.loads(timing.read_text()) if timing.is_file() else None)
    lines = ["| setting | s per clip | genre | mode | energy | FD | FAD |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, (r, t) in rows.items():
        acc = r["accuracy"]
        per = f"{t['seconds'] / t['clips']:.2f}" if t else "-"
        lines.append(f"| {name} | {per} | {acc['genre']:.1%} | {acc['mode']:.1%} | {acc['energy']:.1%} | "
                     f"{r['fd']:.2f} | {r['fad']:.2f} |")
    table = "\n".join(lines) + f"\n\n{args.n} {args.split} records of {args.manifest}; model {args.model or 'default'}.\n"
    (out / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
