"""Sanity rows for the SynthMeL metrics: what a perfect, a useless and a mismatched "generator" score.

    python benchmarks/metric_sanity.py --manifest /work/data/synthmel-2000/manifest.jsonl \
        --cache /work/eval-work/judge-cache --out /work/eval-work/metric-sanity.json

Every row scores a set of clips standing in for generated music against the test split
(reference audio, images, captions and requested labels of the test records), with the shipped
judges, through the same `evaluate_features` as `melfusion evaluate`:

- test vs itself: the reference clips themselves (FD = FAD = KL = 0; IMSM and accuracy at their best);
- val, label-matched (the floor): for each test record a val clip with the same genre, mode and
  energy (different music, right labels): what a perfect generator could score;
- val, shuffled (the ceiling): val clips paired with test records at random (right kind of
  audio, wrong labels): paired metrics at their worst while FD/FAD stay real-audio-like;
- silence and white noise (-18 dBFS RMS, like SynthMeL's level): clips that are not music.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from melfusion.metrics import judges as J
from melfusion.metrics.embedders import synthmel as sm
from melfusion.metrics.evaluate import evaluate_features, markdown_table


def label_matched(test, val, rng) -> list[int]:
    """For each test record the index of a val record with the same (genre, mode, energy), used in turn."""
    pools: dict[tuple, list[int]] = {}
    for j, e in enumerate(val):
        pools.setdefault((e.record["genre"], e.record["mode"], e.record["energy"]), []).append(j)
    for p in pools.values():
        rng.shuffle(p)
    used: dict[tuple, int] = {}
    out = []
    for e in test:
        key = (e.record["genre"], e.record["mode"], e.record["energy"])
        pool = pools.get(key) or [j for j, v in enumerate(val) if v.record["genre"] == e.record["genre"]]
        k = used.get(key, 0)
        out.append(pool[k % len(pool)])
        used[key] = k + 1
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--cache", default=None, help="judge feature cache (see melfusion.metrics.judges)")
    ap.add_argument("--judges", default=None, help="judges folder (default: the shipped one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="only the first N test records (a quick check)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here (the table goes to stdout)")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    cache = Path(args.cache) if args.cache else Path(".judge-cache")
    judges = sm.load_judges(args.judges)
    test, val = J._records(args.manifest, "test")[:args.limit], J._records(args.manifest, "val")
    ref = J.cached_features(test, cache, progress=False)
    val_feats = J.cached_features(val, cache, progress=False)
    images = J.cached_images(test, cache)
    rng = np.random.default_rng(args.seed)
    n = len(test)
    samples = int(round(np.median([f.shape[0] for f in ref]) - 1) * 160)
    noise = [(10 ** (-18 / 20)) * rng.standard_normal(samples).astype(np.float32) for _ in range(n)]
    front = sm.JudgeFrontEnd()
    sets = {
        "test vs itself": ref,
        "val, label-matched (floor)": [val_feats[j] for j in label_matched(test, val, rng)],
        "val, shuffled labels (ceiling)": [val_feats[j] for j in rng.permutation(len(val))[:n]],
        "silence": sm.features_of([np.zeros(samples, np.float32)] * n, front),
        "white noise": sm.features_of(noise, front),
    }
    rows, memo = {}, {}
    for name, gen in sets.items():
        t0 = time.time()
        rows[name] = evaluate_features(test, ref, gen, judges, images=images, memo=memo)
        print(f"{name}: {time.time() - t0:.0f} s", file=sys.stderr)
    table = markdown_table(rows)
    print(table)
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "table": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
