"""Train the frozen mode-and-pace reader of audio latents (melfusion.music.reader; issue 12, D).

    .venv/bin/python scripts/train_reader.py configs/small/diag-e-reader.toml runs/small/reader

It reads the music config's manifest and audio VAE (its init and init_parts), takes the real
clips' latents from the same cache the music stage uses, fits the reader on random crops of the
training split (the music stage's crop length), and prints its accuracy on the validation split,
per crop and per whole clip, before saving it. A few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from melfusion.errors import MelFusionError  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config", help="a music-stage training config (its manifest, init and crop_frames)")
    ap.add_argument("out", help="folder to save the reader to")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        import torch

        from melfusion.music.reader import ReaderConfig, accuracy, label_tensor, train_reader
        from melfusion.training.config import load_config
        from melfusion.training.stages import stage_data
        from melfusion.training.trainer import load_entries, load_init

        cfg = load_config(args.config, {"reader_weight": 0.0, "harmony_weight": 0.0})
        if cfg.stage != "music" or not cfg.crop_frames:
            raise MelFusionError(f"{args.config}: the reader needs a music-stage config with crop_frames")
        train, val = load_entries(cfg)
        pipe = load_init(cfg)
        data = stage_data(cfg, pipe, train, val, cfg.cache_dir)
        frames = cfg.crop_frames // pipe.audio_vae.factor
        z_train, z_val = data["train_latents"], data["val_latents"]
        y_train, y_val = label_tensor([e.record for e in train]), label_tensor([e.record for e in val])
        rc = ReaderConfig(in_channels=z_train.shape[1], bins=z_train.shape[3], width=args.width)
        reader = train_reader(z_train, y_train, rc, frames, steps=args.steps, seed=args.seed)
        report = {"train_records": len(train), "val_records": len(val), "crop_latent_frames": frames,
                  "steps": args.steps,
                  "val_crop": accuracy(reader, z_val, y_val, frames),
                  "val_whole": accuracy(reader, z_val, y_val),
                  "train_crop": accuracy(reader, z_train, y_train, frames)}
        reader.save(args.out)
        (Path(args.out) / "report.json").write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
    except MelFusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
