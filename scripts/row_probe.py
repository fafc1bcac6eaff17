"""Does the music UNet know which frequency row a position is at? A linear probe of its features.

    .venv/bin/python scripts/row_probe.py --model DIR --manifest M [--split val] [--clips 16]

Real clips of the split are noised to a timestep and run through the UNet (an empty caption); the
features after each decoder block (and the first encoder block) are read at every position, and
a least-squares linear classifier, fitted on half the clips, names each position's frequency row
on the other half. A network that cannot tell its rows apart could not put a note at a pitch it
is told; one that can has the position it needs (issue 12, diagnostic H).
"""
from __future__ import annotations

import argparse
import sys


def probe_accuracy(features, rows: int):
    """Held-out accuracy of a linear row classifier on `features` (clips, c, frames, rows): fitted on
    the first half of the clips, tested on the rest. Returns (all rows, interior rows, within one)."""
    import torch

    b, c, t, r = features.shape
    x = features.permute(0, 2, 3, 1).reshape(b, t * r, c)
    y = torch.arange(r).repeat(t)
    half = b // 2
    xtr, xte = x[:half].reshape(-1, c), x[half:].reshape(-1, c)
    ytr, yte = y.repeat(half), y.repeat(b - half)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    ones = lambda a: torch.cat([(a - mu) / sd, torch.ones(len(a), 1)], 1)  # noqa: E731
    w = torch.linalg.lstsq(ones(xtr), torch.nn.functional.one_hot(ytr, r).float()).solution
    pred = (ones(xte) @ w).argmax(1)
    inner = (yte >= 3) & (yte < r - 3)
    return (float((pred == yte).float().mean()), float((pred == yte)[inner].float().mean()),
            float(((pred - yte).abs() <= 1)[inner].float().mean()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--timesteps", default="950,500")
    args = ap.parse_args()
    import torch

    from melfusion.errors import MelFusionError
    from melfusion.metrics.evaluate import load_reference
    from melfusion.pipeline import MelFusionPipeline
    from melfusion.training.caches import build_audio_latents, build_mels

    try:
        pipe = MelFusionPipeline.from_pretrained(args.model)
        entries = load_reference(args.manifest, args.split)[:args.clips]
        if len(entries) < 2:
            raise MelFusionError(f"the {args.split} split of {args.manifest} has fewer than 2 records")
        with torch.no_grad():
            z = build_audio_latents(build_mels(entries, pipe.mel, pipe.frames_for(10.0), False), pipe.audio_vae,
                                    progress=False)
    except MelFusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    music, unet = pipe.music, pipe.music.unet
    feats = {}

    def keep(name):
        def hook(module, inputs, output):
            feats[name] = (output[0] if isinstance(output, tuple) else output).detach()
        return hook

    unet.down_blocks[0].register_forward_hook(keep("encoder block 1"))
    for i, block in enumerate(unet.up_blocks):
        block.register_forward_hook(keep(f"decoder block {i + 1}"))
    null, null_mask = pipe.text_encoder.encode([""] * len(z))
    g = torch.Generator().manual_seed(0)
    for t in (int(x) for x in args.timesteps.split(",")):
        a = music.noise_scheduler.alphas_cumprod[t]
        noisy = a.sqrt() * z + (1 - a).sqrt() * torch.randn(z.shape, generator=g)
        with torch.no_grad():
            music.predict(noisy, torch.tensor(t), null, null_mask, None)
        for name, f in feats.items():
            if f.dim() == 4 and f.shape[3] == z.shape[3]:
                acc, inner, near = probe_accuracy(f, f.shape[3])
                print(f"t={t:4d} {name}: row named in {100 * acc:.1f}% of positions, {100 * inner:.1f}% of "
                      f"interior ones ({100 * near:.1f}% within one row)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
