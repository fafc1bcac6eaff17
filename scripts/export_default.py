"""Ship a trained model as the package's default: weights in float16 safetensors, 80 MB at most.

    .venv/bin/python scripts/export_default.py runs/small/music/model [--out melfusion/assets/default]
        [--image-guidance G] [--guided-steps N] [--teacher-steps N]

`--image-guidance` stores a default image guidance scale with the model (generate's
`--image-guidance`, one more UNet pass per step); without it the model's own defaults are kept.

Loading upcasts to float32 (diffusers and our own modules both do), so only the stored size
changes. The script checks the size, loads the result back, and composes one clip with it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LIMIT_MB = 80.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--out", default=str(Path(__file__).parents[1] / "melfusion" / "assets" / "default"))
    ap.add_argument("--image-guidance", type=float, default=None, help="default image guidance scale to store")
    ap.add_argument("--guided-steps", type=int, default=None, help="default guided steps to store (generate's --guided-steps)")
    ap.add_argument("--teacher-steps", type=int, default=None,
                    help="default teacher steps to store (generate's --teacher-steps)")
    args = ap.parse_args()
    from melfusion.pipeline import MelFusionPipeline

    pipe = MelFusionPipeline.from_pretrained(args.model)
    if args.image_guidance is not None:
        pipe.defaults["image_guidance_scale"] = args.image_guidance
    if args.guided_steps is not None:
        pipe.defaults["guided_steps"] = args.guided_steps
    if args.teacher_steps is not None:
        pipe.defaults["teacher_steps"] = args.teacher_steps
    out = pipe.save_pretrained(args.out)
    for f in out.rglob("*.safetensors"):
        tensors = load_file(str(f))
        save_file({k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}, str(f))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    print(f"{out}: {size:.1f} MB")
    if size > LIMIT_MB:
        print(f"error: the default model is {size:.1f} MB, over the {LIMIT_MB:.0f} MB limit", file=sys.stderr)
        return 1
    again = MelFusionPipeline.from_pretrained(out)
    clip = again(image=str(Path(__file__).parents[1] / "examples" / "beach-post.png"), prompt="folk guitar",
                 duration_s=2.0, generator=torch.Generator().manual_seed(0), progress=False)
    print(f"reloaded and composed {len(clip.audio) / clip.sample_rate:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
