"""Wall time and peak memory of one `generate` (10 s of audio by default), split by stage.

    .venv/bin/python benchmarks/bench_generate.py [--presets default tiny small] [--duration 10] [--repeats 3]

`default` is the shipped model (melfusion/assets/default) as `melfusion generate` loads it.

Each preset runs in its own process so its peak resident memory is its own. The model is built
and warmed up (one short call) before timing; the reported figure is the median over repeats.
Random weights time exactly like trained ones: the arithmetic does not depend on the values.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def measure(preset: str, duration: float, repeats: int, steps: int | None) -> dict:
    import torch

    from melfusion import presets
    from melfusion.images import load_image

    from melfusion.loading import load_model

    torch.set_num_threads(int(torch.get_num_threads()))
    pipe = load_model(None) if preset == "default" else presets.build(preset)
    image = load_image("examples/beach-post.png")
    prompt = "An acoustic folk song with fingerpicked guitar and soft harmonica"
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pipe(image=image, prompt=prompt, duration_s=1.0, num_inference_steps=2, progress=False)  # warm-up
    runs = []
    for i in range(repeats):
        clock = time.perf_counter()
        out = pipe(image=image, prompt=prompt, duration_s=duration, num_inference_steps=steps,
                   generator=torch.Generator().manual_seed(i), progress=False)
        runs.append(dict(out.timings, wall=time.perf_counter() - clock))
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return dict(preset=preset, duration_s=duration, steps=steps or pipe.defaults["num_inference_steps"],
                inversion_steps=pipe.defaults.get("inversion_steps") or steps or pipe.defaults["num_inference_steps"],
                threads=torch.get_num_threads(), repeats=repeats, **{f"{k}_s": round(v, 3) for k, v in median.items()},
                peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                model_rss_mb=round(rss_model, 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["default", "tiny", "small"])
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: each preset's)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.duration, args.repeats, args.steps)))
        return
    rows = []
    for preset in args.presets:
        cmd = [sys.executable, __file__, "--one", preset, "--duration", str(args.duration),
               "--repeats", str(args.repeats)] + (["--steps", str(args.steps)] if args.steps else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"{preset} failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    cols = ["preset", "steps", "inversion_steps", "text_s", "inversion_s", "denoising_s", "vocoding_s", "wall_s",
            "peak_rss_mb"]
    print(f"generate, {args.duration:g} s of audio, median of {args.repeats}, {rows[0]['threads']} threads")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
