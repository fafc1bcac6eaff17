"""Is the picture's mode and energy there at the synapse's input? A linear probe on the cached DDIM
inversion trajectories (what the visual synapse reads the T2I decoder's features from).

    .venv/bin/python scripts/trajectory_probe.py data/synthmel-2000/manifest.jsonl \
        runs/cache/trajectories-<train>.safetensors runs/cache/trajectories-<val>.safetensors

The two caches are the music stage's (`melfusion train` builds them; the train split's is the one
with 1,201 records). For each trajectory step, an L2-regularised logistic regression on the latent
(per-channel mean and spread, and every value) is fitted on train and scored on validation.
Prints each step's validation accuracy for mode (major/minor) and energy (driving/calm).
"""
from __future__ import annotations

import sys

import torch
from safetensors.torch import load_file

from melfusion.errors import MelFusionError
from melfusion.metrics.evaluate import load_reference


def features(traj: torch.Tensor, k: int) -> torch.Tensor:
    z = traj[:, k]
    return torch.cat([z.mean((2, 3)), z.std((2, 3)), z.flatten(1)], 1)


def probe(x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, l2: float = 1e-2) -> float:
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x, xv = (x - mu) / sd, (xv - mu) / sd
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return ((xv @ w + b > 0).float() == yv).float().mean().item()


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    manifest, train_path, val_path = sys.argv[1:]
    torch.manual_seed(0)
    try:  # the manifest read as the training stage read it, so rows line up with the caches
        split = {s: [e.record for e in load_reference(manifest, s)] for s in ("train", "val")}
    except MelFusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    train, val = load_file(train_path), load_file(val_path)
    if len(train["latents"]) != len(split["train"]) or len(val["latents"]) != len(split["val"]):
        print("error: the caches do not hold the manifest's train and val splits", file=sys.stderr)
        return 2
    steps = [int(t) for t in train["timesteps"]]
    feats = [(features(train["latents"], k), features(val["latents"], k)) for k in range(len(steps))]
    for key, positive in (("mode", "major"), ("energy", "driving")):
        y = torch.tensor([float(r[key] == positive) for r in split["train"]])
        yv = torch.tensor([float(r[key] == positive) for r in split["val"]])
        accs = [probe(x, y, xv, yv) for x, xv in feats]
        base = max(yv.mean().item(), 1 - yv.mean().item())
        print(f"{key}: majority class {base:.3f}; probe by timestep: "
              + " ".join(f"{t}:{a:.3f}" for t, a in zip(steps, accs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
