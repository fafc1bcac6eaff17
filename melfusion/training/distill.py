"""Guidance distillation: one pass of a student network per denoising step in place of the guided
passes (issue 13).

At its default settings a MeLFusion model runs three passes of its music UNet per step
(the unconditional one, the caption with the null image, the caption with the picture) and mixes
them: e = e(-,-) + g (e(T,-) - e(-,-)) + g_img (e(T,I) - e(T,-)). The student, a copy of the same
network started from the teacher's weights, learns to output that mixture from the fully
conditioned inputs alone (Meng et al., "On distillation of guided diffusion models", CVPR 2023,
its first stage, at fixed scales).

It learns on the states the sampler itself visits: the teacher composes training-split records
at the model's settings (solver, steps, precision, scales, key guidance) and every step's scaled
latent and guided output are kept (`collect`); the student is then fitted to those outputs with
an MSE loss (`train`). Both resume after a kill: `collect` writes one file per group of records,
`train` checkpoints its weights, optimiser and random state. `export` writes the teacher's
folder with the student beside it (`distilled/`), which the pipeline then uses wherever a call's
guidance is the one it was distilled for (`MelFusionPipeline.__call__`'s `distilled`).

    python -m melfusion.training.distill collect --model M --manifest MAN --split train --clips 600 --out D/train
    python -m melfusion.training.distill train --model M --data D/train --val D/val --steps 600 --out D/run
    python -m melfusion.training.distill export --model M --run D/run --out D/model
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from melfusion.atomic import atomic_file
from melfusion.errors import MelFusionError

PART = "part-{:05d}.pt"
CHECKPOINT = "checkpoint.pt"
LOG = "log.csv"


def distilled_config(pipe) -> dict:
    """The guidance a student of `pipe` stands for: the model's default settings."""
    d = pipe.defaults
    if pipe.conditioning != "synapse":
        raise MelFusionError("guidance distillation is for a MeLFusion (synapse) model")
    ig = d.get("image_guidance_scale")
    if ig is None:
        raise MelFusionError("the model has no default image guidance scale to distil")
    return {"guidance_scale": float(d["guidance_scale"]), "image_guidance_scale": float(ig),
            "key_guidance": bool(d.get("key_guidance", False)) and pipe.music.takes_key,
            "solver": d.get("solver") or "ddim", "num_inference_steps": int(d["num_inference_steps"]),
            "precision": d.get("precision") or "fp32"}


def _teacher_model(spec: str):
    from melfusion.loading import load_model

    pipe = load_model(spec)
    if pipe.has_distilled:
        raise MelFusionError(f"{spec} already carries a distilled network: distil from the model without it")
    return pipe


def _records(manifest: str, split: str, clips: int, skip: int = 0):
    from melfusion.metrics.evaluate import load_reference

    entries = load_reference(manifest, split)
    if clips < 1 or skip < 0:
        raise MelFusionError("--clips must be at least 1 and --skip at least 0")
    if len(entries) < skip + clips:
        raise MelFusionError(f"the {split} split of {manifest} has {len(entries)} records, fewer than "
                             f"--skip {skip} + --clips {clips}")
    return entries[skip:skip + clips]


# -- collecting the teacher's guided outputs ----------------------------------------------------
def collect(model: str, manifest: str, split: str, clips: int, out: str, per_file: int = 8, batch: int = 4,
            seed: int = 0, progress: bool = True, skip: int = 0) -> Path:
    """The teacher composes `clips` records of `split` (after the first `skip`) at its settings;
    per file of `per_file` records: captions, keys, the images' inversion latents and every
    step's (t, input, output)."""
    from tqdm import tqdm

    from melfusion.images import load_image
    from melfusion.metrics.cli import record_seed
    from melfusion.music.keys import parse_key

    if per_file < 1 or batch < 1:
        raise MelFusionError("--per-file and --batch must be at least 1")
    entries = _records(manifest, split, clips, skip)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = _teacher_model(model)
    config = distilled_config(pipe)
    settings = {"model": str(Path(model).resolve()) if model and Path(model).exists() else model,
                "manifest": str(Path(manifest).resolve()), "split": split, "skip": skip, "per_file": per_file,
                "seed": seed,
                **config}
    settings_file = out / "collect.json"
    if settings_file.is_file():
        old = json.loads(settings_file.read_text())
        if old != settings:
            diff = ", ".join(f"{k} {old.get(k)!r} (now {v!r})" for k, v in settings.items() if old.get(k) != v)
            raise MelFusionError(f"{out} holds teacher outputs made with other settings: {diff}; use another --out")
    else:
        settings_file.write_text(json.dumps(settings, indent=1) + "\n")
    groups = [entries[i:i + per_file] for i in range(0, len(entries), per_file)]
    todo = [k for k in range(len(groups)) if not (out / PART.format(k)).is_file()]
    bar = tqdm(total=sum(len(groups[k]) for k in todo), desc="teacher", unit="clip", disable=not progress,
               file=sys.stderr)
    for k in todo:
        part = {"ids": [], "captions": [], "keys": [], "traj": [], "x": [], "target": [], "t": None}
        for start in range(0, len(groups[k]), batch):
            recs = groups[k][start:start + batch]
            images = [load_image(e.image_path) for e in recs]
            captions = [e.record["caption"] for e in recs]
            steps: list = []
            result = pipe(image=images, prompt=captions, distilled=False, progress=False, output_type="latent",
                          generator=[torch.Generator().manual_seed(record_seed(e.id, seed)) for e in recs],
                          step_callback=lambda i, t, x, o: steps.append((t, x.float().clone(), o.float().clone())))
            traj = pipe.invert_image(pipe.prepare_images(images), config_inversion_steps(pipe))
            part["ids"] += [e.id for e in recs]
            part["captions"] += captions
            part["keys"] += [parse_key(name, with_mode=pipe.music.takes_mode) for name in result.keys] \
                if result.keys else [None] * len(recs)
            part["traj"].append(traj.latents)
            part["x"].append(torch.stack([s[1] for s in steps]))
            part["target"].append(torch.stack([s[2] for s in steps]))
            part["t"] = [s[0] for s in steps]
            part["traj_timesteps"], part["traj_train_timesteps"] = traj.timesteps, traj.num_train_timesteps
            part["traj_offset"] = traj.feature_offset
            bar.update(len(recs))
        for name in ("traj", "x", "target"):
            part[name] = torch.cat(part[name], dim=1)
        with atomic_file(out / PART.format(k)) as tmp:
            torch.save(part, tmp)
    bar.close()
    return out


def config_inversion_steps(pipe) -> int:
    return pipe.inversion_steps_for(None, int(pipe.defaults["num_inference_steps"]))


class TeacherOutputs:
    """Every part file of a `collect` folder, joined: per clip its caption, key and inversion
    latents, per (step, clip) the scaled latent the teacher read and the guided output it gave."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        files = sorted(folder.glob("part-*.pt"))
        if not files:
            raise MelFusionError(f"no teacher outputs in {folder} (run `collect` first)")
        parts = [torch.load(f, weights_only=False) for f in files]
        self.settings = json.loads((folder / "collect.json").read_text())
        self.captions = [c for p in parts for c in p["captions"]]
        self.keys = [k for p in parts for k in p["keys"]]
        self.traj = torch.cat([p["traj"] for p in parts], dim=1)
        self.x = torch.cat([p["x"] for p in parts], dim=1)
        self.target = torch.cat([p["target"] for p in parts], dim=1)
        self.t = parts[0]["t"]
        self.traj_timesteps = parts[0]["traj_timesteps"]
        self.traj_train_timesteps = parts[0]["traj_train_timesteps"]
        self.traj_offset = parts[0].get("traj_offset", 1)
        if any(p["t"] != self.t for p in parts):
            raise MelFusionError(f"{folder}: the part files were made at different timesteps")

    @property
    def clips(self) -> int:
        return self.x.shape[1]

    @property
    def steps(self) -> int:
        return self.x.shape[0]


# -- fitting the student ------------------------------------------------------------------------
class Student:
    """The student network (the teacher's music UNet and synapse, trainable) and what it reads."""

    def __init__(self, model: str, bf16: bool):
        from melfusion.loading import load_model

        self.pipe = load_model(model, lean=False)
        if self.pipe.has_distilled:
            raise MelFusionError(f"{model} already carries a distilled network: distil from the model without it")
        self.music = self.pipe.music
        self.music.unet.train().requires_grad_(True)
        self.music.synapse.requires_grad_(True)
        self.bf16 = bf16
        self._text: dict[int, tuple] = {}

    def parameters(self):
        return [p for p in self.music.parameters() if p.requires_grad]

    def param_groups(self, lr: float, synapse_lr: float | None) -> list[dict]:
        """One group at `lr`, or with `synapse_lr` the synapse (projections and alphas) on its own
        rate: the student must scale up what the picture adds (image guidance 8), and at the UNet's
        rate the synapse's projections and alphas hardly move (as in the fine-tune, trainer.param_groups)."""
        params = self.parameters()
        if synapse_lr is None:
            return [{"params": params, "lr": lr}]
        synapse = {id(p) for p in self.music.synapse.parameters()}
        return [{"params": [p for p in params if id(p) not in synapse], "lr": lr},
                {"params": [p for p in params if id(p) in synapse], "lr": synapse_lr}]

    def encode(self, data: TeacherOutputs, clips: list[int]):
        """Caption tokens and masks of `clips` (encoded once per clip and kept)."""
        key = id(data)
        if key not in self._text:
            with torch.no_grad():
                chunks = [self.pipe.encode_prompt(data.captions[i:i + 32])[:2] for i in range(0, data.clips, 32)]
            self._text[key] = (torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks]))
        text, mask = self._text[key]
        return text[clips], mask[clips]

    def predict(self, data: TeacherOutputs, clips: list[int], steps: list[int]) -> torch.Tensor:
        from melfusion.t2i.model import ImageTrajectory

        clips_t = torch.tensor(clips)
        t = torch.tensor([data.t[s] for s in steps])
        traj = ImageTrajectory(data.traj[:, clips_t], data.traj_timesteps, data.traj_train_timesteps,
                               feature_offset=data.traj_offset)
        with torch.no_grad():
            kv = self.pipe.image_features_for_training(traj, t)
        text, mask = self.encode(data, clips)
        keys = None
        if self.music.takes_key:
            keys = torch.tensor([data.keys[c] for c in clips], dtype=torch.long)
        x = data.x[torch.tensor(steps), clips_t]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self.music.predict(x, t, text, mask, kv, torch.ones(len(clips)), keys).float()

    def loss(self, data: TeacherOutputs, clips: list[int], steps: list[int]) -> torch.Tensor:
        target = data.target[torch.tensor(steps), torch.tensor(clips)]
        return F.mse_loss(self.predict(data, clips, steps), target)


def _val_pairs(data: TeacherOutputs) -> list[tuple[int, int]]:
    return [(c, s) for c in range(data.clips) for s in range(data.steps)]


@torch.no_grad()
def val_loss(student: Student, data: TeacherOutputs, batch: int = 12) -> float:
    """Mean squared error against the teacher's guided outputs over every (clip, step) of `data`."""
    pairs = _val_pairs(data)
    total = 0.0
    for i in range(0, len(pairs), batch):
        chunk = pairs[i:i + batch]
        loss = student.loss(data, [c for c, _ in chunk], [s for _, s in chunk])
        total += loss.item() * len(chunk)
    return total / len(pairs)


def train(model: str, data: str, val: str | None, steps: int, out: str, batch: int = 12, lr: float = 3e-5,
          warmup: int = 50, checkpoint_every: int = 25, val_every: int = 100, seed: int = 0,
          precision: str = "auto", progress: bool = True, synapse_lr: float | None = None) -> Path:
    """Fit the student to the teacher's outputs for `steps` optimiser steps of `batch` (clip, step)
    pairs drawn uniformly; resumes from `out`'s checkpoint. Logs the training and validation MSE
    (the validation set's MSE at step 0 is the teacher's own conditional pass against its guided
    output: what the student starts from)."""
    from tqdm import tqdm

    from melfusion.pipeline import use_bf16
    from melfusion.training.trainer import StopSignal, TrainingStopped

    if steps < 1 or batch < 1:
        raise MelFusionError("--steps and --batch must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_data = TeacherOutputs(data)
    val_data = TeacherOutputs(val) if val else None
    run = {"model": train_data.settings["model"], "data": str(Path(data).resolve()), "batch": batch, "lr": lr,
           "warmup": warmup, "seed": seed, "steps": steps}
    if synapse_lr is not None:
        run["synapse_lr"] = synapse_lr
    run_file = out / "run.json"
    if run_file.is_file():
        old = json.loads(run_file.read_text())
        changed = [k for k in {**old, **run} if k != "steps" and old.get(k) != run.get(k)]
        if changed:
            raise MelFusionError(f"{out} holds a run with other settings ({', '.join(changed)}); use another --out")
    with atomic_file(run_file) as tmp:
        tmp.write_text(json.dumps(run, indent=1) + "\n")
    student = Student(model, use_bf16(precision))
    params = student.parameters()
    groups = student.param_groups(lr, synapse_lr)
    base_lrs = [g["lr"] for g in groups]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    step = 0
    ckpt = out / CHECKPOINT
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        student.music.load_state_dict(state["music"])
        opt.load_state_dict(state["opt"])
        generator.set_state(state["rng"])
        step = state["step"]
    log = out / LOG
    if not log.is_file():
        log.write_text("step,train_mse,val_mse,seconds\n")

    def save():
        with atomic_file(ckpt) as tmp:
            torch.save({"music": student.music.state_dict(), "opt": opt.state_dict(), "rng": generator.get_state(),
                        "step": step}, tmp)

    def write_log(train_mse, val_mse, seconds):
        with log.open("a") as f:
            f.write(f"{step},{'' if train_mse is None else f'{train_mse:.6f}'},"
                    f"{'' if val_mse is None else f'{val_mse:.6f}'},{seconds:.1f}\n")

    if step == 0 and val_data is not None:
        write_log(None, val_loss(student, val_data, batch), 0.0)
    bar = tqdm(total=steps, initial=step, desc="distil", unit="step", disable=not progress, file=sys.stderr)
    clock, running = time.perf_counter(), []
    n_pairs = train_data.clips * train_data.steps
    with StopSignal() as stop:
        while step < steps:
            pick = torch.randint(0, n_pairs, (batch,), generator=generator).tolist()
            clips, which = [p // train_data.steps for p in pick], [p % train_data.steps for p in pick]
            for group, base in zip(opt.param_groups, base_lrs):
                group["lr"] = base * min(1.0, (step + 1) / max(1, warmup))
            loss = student.loss(train_data, clips, which)
            if not math.isfinite(loss.item()):
                raise MelFusionError(f"the distillation loss is not finite at step {step + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            running.append(loss.item())
            bar.update(1)
            bar.set_postfix(mse=f"{sum(running[-20:]) / len(running[-20:]):.4f}")
            last = step == steps
            if step % val_every == 0 or last:
                v = val_loss(student, val_data, batch) if val_data is not None else None
                write_log(sum(running) / len(running), v, time.perf_counter() - clock)
                running = []
            if step % checkpoint_every == 0 or last or stop.received is not None:
                save()
            if stop.received is not None and not last:
                bar.close()
                raise TrainingStopped(f"stopped at step {step}; the checkpoint in {out} resumes it (run the same "
                                      "command again)")
    bar.close()
    return out


def export(model: str, run: str, out: str) -> Path:
    """The teacher's folder with the trained student beside it, as `distilled/`."""
    from melfusion.loading import load_model
    from melfusion.music.ldm import MusicLDM
    from melfusion.pipeline import MelFusionPipeline

    ckpt = Path(run) / CHECKPOINT
    if not ckpt.is_file():
        raise MelFusionError(f"no distillation checkpoint in {run}")
    pipe = load_model(model, lean=False)
    if pipe.has_distilled:
        raise MelFusionError(f"{model} already carries a distilled network")
    config = distilled_config(pipe)
    student = load_model(model, lean=False).music
    state = torch.load(ckpt, weights_only=False)
    student.load_state_dict(state["music"])
    config["distilled_steps"] = int(state["step"])
    pipe.distilled, pipe.distilled_config = MusicLDM(student.unet, student.synapse, student.scheduler_config), config
    pipe.save_pretrained(out)
    MelFusionPipeline.from_pretrained(out)  # it loads back
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m melfusion.training.distill", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="the teacher's guided outputs on a split's records")
    c.add_argument("--model", default=None, help="the teacher (default: the shipped default)")
    c.add_argument("--manifest", required=True)
    c.add_argument("--split", default="train")
    c.add_argument("--clips", type=int, required=True)
    c.add_argument("--skip", type=int, default=0, help="start after this many of the split's records")
    c.add_argument("--out", required=True)
    c.add_argument("--per-file", type=int, default=8)
    c.add_argument("--batch", type=int, default=4)
    c.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train", help="fit the student to collected outputs (resumes)")
    t.add_argument("--model", default=None)
    t.add_argument("--data", required=True)
    t.add_argument("--val", default=None)
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--batch", type=int, default=12)
    t.add_argument("--lr", type=float, default=3e-5)
    t.add_argument("--synapse-lr", type=float, default=None,
                   help="the synapse's projections and alphas on this rate (default: --lr)")
    t.add_argument("--warmup", type=int, default=50)
    t.add_argument("--checkpoint-every", type=int, default=25)
    t.add_argument("--val-every", type=int, default=100)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    e = sub.add_parser("export", help="the teacher's folder with the student as distilled/")
    e.add_argument("--model", default=None)
    e.add_argument("--run", required=True)
    e.add_argument("--out", required=True)
    for p in (c, t):
        p.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    from melfusion.loading import quiet_libraries
    from melfusion.training.trainer import TrainingStopped

    quiet_libraries()
    try:
        if args.command == "collect":
            where = collect(args.model, args.manifest, args.split, args.clips, args.out, args.per_file, args.batch,
                            args.seed, not args.quiet, args.skip)
        elif args.command == "train":
            where = train(args.model, args.data, args.val, args.steps, args.out, args.batch, args.lr, args.warmup,
                          args.checkpoint_every, args.val_every, args.seed, args.precision, not args.quiet,
                          args.synapse_lr)
        else:
            where = export(args.model, args.run, args.out)
    except MelFusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingStopped as exc:
        print(str(exc), file=sys.stderr)
        return 130
    print(where)
    return 0


if __name__ == "__main__":
    sys.exit(main())
