"""How much of the music latents' variance each label explains: the share of the time-averaged
latent profile's variance (per channel and frequency row) that lies between the label's groups.

    .venv/bin/python scripts/latent_signal.py configs/small/music-pretrain.toml

A diffusion model at high noise predicts about the mean latent of what it is told; a label whose
groups have the same mean latent gives the loss nothing to learn there. The latents are the
training split's, all of it (so the config's caches serve; they are built if missing). A shuffled key is the floor.
"""
from __future__ import annotations

import argparse
import json
import random
import sys


def between_share(profiles, labels) -> float:
    """The variance of the group means of `profiles` (N, ...) by `labels` (weighted by group
    size), averaged over elements."""
    mu = profiles.mean(0)
    groups: dict = {}
    for i, lab in enumerate(labels):
        groups.setdefault(lab, []).append(i)
    between = sum(len(idx) * ((profiles[idx].mean(0) - mu) ** 2) for idx in groups.values()) / len(labels)
    return float(between.mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--out", default=None, help="also write the figures to this .json")
    args = ap.parse_args()
    from pathlib import Path

    from melfusion.errors import MelFusionError
    from melfusion.training.config import load_config
    from melfusion.training.stages import stage_data
    from melfusion.training.trainer import load_entries, load_init

    try:
        cfg = load_config(args.config)
        if cfg.stage != "music":
            raise MelFusionError(f"{args.config} is not a music-stage config")
        train, val = load_entries(cfg)
        pipe = load_init(cfg)
        z = stage_data(cfg, pipe, train, val[:1], Path(cfg.cache_dir) if cfg.cache_dir else None)["train_latents"]
    except MelFusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    z = z.float()
    total = float(z.var(dim=(0, 2)).mean())  # per element, over clips and frames
    profiles = z.mean(dim=2)                 # (N, channels, rows): each clip's time-averaged latent
    recs = [e.record for e in train]
    shuffled = [r.get("key") for r in recs]
    random.Random(0).shuffle(shuffled)
    labels = {"genre": [r.get("genre") for r in recs], "subgenre": [r.get("subgenre") for r in recs],
              "mode": [r.get("mode") for r in recs], "energy": [r.get("energy") for r in recs],
              "tonic": [str(r.get("key", "")).split()[0] for r in recs], "key": [r.get("key") for r in recs],
              "key, shuffled": shuffled}
    out = {"records": len(recs), "variance_per_element": total}
    print(f"{len(recs)} training clips; per-element latent variance {total:.3f}")
    for name, lab in labels.items():
        share = between_share(profiles, lab) / total
        out[name] = share
        print(f"{name:14s} {len(set(lab)):3d} groups   {100 * share:6.2f}% of the variance between its groups' mean latents")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
