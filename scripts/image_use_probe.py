"""Does a trained music model use the image? Its validation loss with each record's own image,
with another record's image (one fixed cycle through the records), and with no image, at the
training's fixed validation timesteps and noise.

    .venv/bin/python scripts/image_use_probe.py configs/small/music.toml [--model DIR] [--limit 160]

A model that reads the image has a lower loss with the right image than with a wrong one; for
the text-only baseline the three figures are equal (its synapse is off). Reads the training
caches, so run it where the stage was trained.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--model", default=None, help="default: the config's out_dir/model")
    ap.add_argument("--limit", type=int, default=160, help="validation records used")
    args = ap.parse_args()

    from melfusion.music.ldm import ConditionDropout
    from melfusion.pipeline import READS_SYNAPSE, MelFusionPipeline
    from melfusion.training.config import load_config
    from melfusion.training.stages import VAL_TIMESTEPS, make_stage, stage_data
    from melfusion.training.trainer import load_entries

    cfg = load_config(args.config)
    pipe = MelFusionPipeline.from_pretrained(args.model or Path(cfg.out_dir) / "model")
    train, val = load_entries(cfg)
    data = stage_data(cfg, pipe, train, val, Path(cfg.cache_dir) if cfg.cache_dir else None, progress=False)
    stage = make_stage(cfg, pipe, data)
    stage.music.unet.eval()
    stage.music.synapse.config.enabled = cfg.conditioning in READS_SYNAPSE
    n = min(args.limit, len(val))
    own = torch.arange(n)
    other = torch.roll(own, 1)
    keep, drop = ConditionDropout(0.0, 0.0, 0.0), ConditionDropout(0.0, 1.0, 0.0)
    totals = {"own image": 0.0, "another record's image": 0.0, "no image": 0.0}
    wins, batches = 0, 0
    with torch.no_grad():
        for s in range(0, n, 8):
            idx = own[s:s + 8]
            latents, text, mask = data["val_latents"][idx], data["val_text"][idx], data["val_mask"][idx]
            feats = stage._features("val", idx)
            losses = {}
            for name, image_feats, dropout in (("own image", feats, keep),
                                               ("another record's image", stage._features("val", other[s:s + 8]), keep),
                                               ("no image", feats, drop)):
                losses[name] = sum(float(stage.music.training_loss(
                    latents, text, mask, data["null_text"], data["null_mask"], image_feats, dropout,
                    torch.Generator().manual_seed(i), torch.full((len(idx),), t)))
                    for i, t in enumerate(VAL_TIMESTEPS)) / len(VAL_TIMESTEPS)
            for k, v in losses.items():
                totals[k] += v * len(idx) / n
            wins += losses["own image"] < losses["another record's image"]
            batches += 1
    print(f"{cfg.source}: {n} validation records, conditioning {cfg.conditioning}")
    for k, v in totals.items():
        print(f"  loss with {k:24s} {v:.5f}")
    print(f"  own image lower than another's in {wins} of {batches} batches of 8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
