"""Per-clip wall time of composing several clips together (what `generate-set --batch-size` does).

    .venv/bin/python benchmarks/bench_batch.py [--model small|DIR] [--batches 1 4 8] [--clips 8]

Makes the same `--clips` clips at each batch size, in one process, and prints seconds per clip
and the speed-up over batch size 1. Random weights time like trained ones.
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="small", help="a preset name or a model folder")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--duration", type=float, default=10.0)
    args = ap.parse_args()

    import torch

    from melfusion.loading import load_model
    from melfusion.images import load_image

    pipe = load_model(args.model, seed=0)
    image = load_image("examples/beach-post.png")
    prompt = "An acoustic folk song with fingerpicked guitar and soft harmonica"
    pipe(image=image, prompt=prompt, duration_s=1.0, num_inference_steps=2, progress=False)  # warm-up
    print(f"model {args.model}, {args.clips} clips of {args.duration:g} s, {torch.get_num_threads()} threads")
    base = None
    for b in args.batches:
        clock = time.perf_counter()
        for start in range(0, args.clips, b):
            n = min(b, args.clips - start)
            pipe(image=[image] * n, prompt=[prompt] * n, duration_s=args.duration, progress=False,
                 generator=[torch.Generator().manual_seed(start + i) for i in range(n)])
        per_clip = (time.perf_counter() - clock) / args.clips
        base = base or per_clip
        print(f"batch {b:2d}: {per_clip:.2f} s per clip, x{base / per_clip:.2f} over batch 1")


if __name__ == "__main__":
    main()
