"""The training loop, on Hugging Face accelerate: one code path for one process or several.

Everything random in a step is drawn from a generator seeded by (seed, step, process), and
the data order is a pure function of (seed, step): a run resumed from a checkpoint retraces
the uninterrupted one exactly. Under `accelerate launch` each process takes its own slice of
every global batch and DistributedDataParallel keeps the weights identical.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
import signal
import threading
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from melfusion.atomic import atomic_dir
from melfusion.errors import MelFusionError
from melfusion.training.caches import as_numpy_seed
from melfusion.training.config import TrainConfig
from melfusion.training.stages import make_stage, stage_data

CHECKPOINT_PREFIX = "step-"


class EMA:
    """Exponential moving average of parameters; the exported model uses the averaged weights."""

    def __init__(self, params, decay: float):
        self.params = list(params)
        self.decay = decay
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int):
        # Warm-up: early on, average over the steps seen so far rather than the full horizon.
        d = min(self.decay, (1 + step) / (10 + step))
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach(), 1 - d)

    @torch.no_grad()
    def copy_to_params(self):
        for s, p in zip(self.shadow, self.params):
            p.copy_(s)

    def state_dict(self):
        return {"decay": self.decay, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state):
        if len(state["shadow"]) != len(self.shadow):
            raise MelFusionError("checkpoint EMA does not match the model")
        for s, saved in zip(self.shadow, state["shadow"]):
            s.copy_(saved)


def param_groups(cfg: TrainConfig, stage, params: list) -> list[dict]:
    """One group, plus one for the alphas when `alpha_lr` is set, one for the synapse's image
    projections when `synapse_lr` is and one for the key embedding when `key_lr` is: AdamW moves a parameter by about its learning rate per step,
    so at the UNet's rate a synapse alpha's logit can hardly leave its start, and projections that
    start at zero grow slowly."""
    names = {id(p): name for name, p in stage.named_parameters()}

    def is_alpha(p):
        return names.get(id(p), "").endswith("alpha_logit")

    def is_projection(p):
        return ".synapse." in f".{names.get(id(p), '')}" and not is_alpha(p)

    groups, rest = [], list(params)
    if cfg.alpha_lr is not None:
        groups.append({"params": [p for p in rest if is_alpha(p)], "lr": cfg.alpha_lr, "weight_decay": 0.0})
        rest = [p for p in rest if not is_alpha(p)]
    if cfg.synapse_lr is not None:
        groups.append({"params": [p for p in rest if is_projection(p)], "lr": cfg.synapse_lr})
        rest = [p for p in rest if not is_projection(p)]
    if cfg.key_lr is not None:
        def is_key(p):
            return names.get(id(p), "").endswith("class_embedding.weight")

        groups.append({"params": [p for p in rest if is_key(p)], "lr": cfg.key_lr})
        rest = [p for p in rest if not is_key(p)]
    return [{"params": rest}] + [g for g in groups if g["params"]]


def architecture(pipe) -> dict:
    """What a checkpoint's weights only fit: the trained networks' shapes and the caption length."""
    return {"text_max_length": pipe.text_encoder.max_length,
            "music_unet": {k: v for k, v in dict(pipe.music.unet.config).items() if not k.startswith("_")},
            "audio_vae": {k: v for k, v in dict(pipe.audio_vae.vae.config).items()
                          if not k.startswith("_") and k != "scaling_factor"},
            "t2i_unet": {k: v for k, v in dict(pipe.t2i.unet.config).items() if not k.startswith("_")},
            "synapse_layers": list(pipe.music.synapse.config.layers)}


def check_architecture(saved: dict | None, now: dict, where: Path) -> None:
    if saved is None:  # checkpoints from before the record was kept
        return
    saved, now = json.loads(json.dumps(saved)), json.loads(json.dumps(now))
    for key in now:
        if saved.get(key) != now[key]:
            if key == "text_max_length":
                what = f"captions of {saved.get(key)} tokens, this model reads {now[key]}"
            elif isinstance(now[key], dict):
                diff = sorted(k for k in set(now[key]) | set(saved.get(key) or {})
                              if (saved.get(key) or {}).get(k) != now[key].get(k))
                what = f"another {key} ({', '.join(diff[:3])} differ)"
            else:
                what = f"other {key}"
            raise MelFusionError(f"the checkpoint in {where} was made for another architecture: {what}; "
                                 "refusing to resume from it")


def lr_lambda(cfg: TrainConfig):
    def f(step):
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def batch_indices(step: int, n: int, batch: int, rank: int, world: int, seed: int) -> torch.Tensor:
    """This process's record indices at `step`: a per-epoch permutation, sliced by process."""
    global_batch = batch * world
    per_epoch = n // global_batch
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(as_numpy_seed(seed, epoch, 7)))
    start = pos * global_batch + rank * batch
    return perm[start:start + batch]


def checkpoints(out_dir: Path) -> list[Path]:
    d = out_dir / "checkpoints"
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and (p / "state.pt").is_file()),
                  key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def save_checkpoint(out_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Write `checkpoints/step-N/state.pt` atomically (a temporary folder renamed into place)."""
    final = out_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:07d}"
    with atomic_dir(final) as tmp:
        torch.save(state, tmp / "state.pt")
    for old in checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


class TrainingStopped(KeyboardInterrupt):
    """Training stopped on a signal after saving a checkpoint of the step it had finished."""


class StopSignal:
    """SIGINT (Ctrl-C) or SIGTERM while training: the step in flight finishes, a checkpoint of it is
    saved, then training stops. A second signal stops at once (the last periodic checkpoint stays)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignal":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def requested(self, accelerator, world: int) -> bool:
        """Whether any process received a signal (every process must stop at the same step)."""
        if world == 1:
            return self.received is not None
        flag = torch.tensor([float(self.received is not None)], device=accelerator.device)
        return bool(accelerator.reduce(flag, "sum").item() > 0)

    def __exit__(self, *exc) -> bool:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False


class Logger:
    """CSV (one row per logged step) and TensorBoard, on the main process only."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: int):
        self.enabled = enabled
        self.path = out_dir / "log.csv"
        self.writer = None
        if not enabled:
            return
        rows = []
        if resume_step > 0 and self.path.is_file():
            # Rows past the checkpoint were written by the run that was interrupted: redo them.
            with self.path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self.rows = rows
        self._write_all()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def _write_all(self):
        keys = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys or ["step"])
            w.writeheader()
            w.writerows(self.rows)

    def log(self, step: int, values: dict):
        if not self.enabled:
            return
        self.rows.append({"step": step, **{k: f"{v:.6g}" for k, v in values.items()}})
        self._write_all()  # a few hundred short rows: rewriting keeps the header complete
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def close(self):
        if self.writer is not None:
            self.writer.close()


def load_entries(cfg: TrainConfig):
    from melfusion.data.manifest import read_manifest

    entries, problems = read_manifest(cfg.manifest)
    if problems:
        raise MelFusionError(f"{cfg.manifest}: {len(problems)} broken line(s), first: {problems[0]}")
    train = [e for e in entries if e.record["split"] == "train"]
    val = [e for e in entries if e.record["split"] == "val"]
    if cfg.limit_records:
        train = train[: cfg.limit_records]
        val = val[: max(1, min(len(val), cfg.limit_records // 4))]
    if not val:
        val = train[: max(1, len(train) // 10)]
    return train, val


def load_init(cfg: TrainConfig):
    from melfusion import presets
    from melfusion.pipeline import NEEDS_IMAGE_ENCODER, MelFusionPipeline

    if cfg.init in presets.PRESETS:
        pipe = presets.build(cfg.init, seed=cfg.seed)
    else:
        pipe = MelFusionPipeline.from_pretrained(cfg.init)
    for part, folder in (cfg.init_parts or {}).items():
        if part == "t2i":
            from melfusion.t2i.model import TextToImageModel

            pipe.t2i = TextToImageModel.from_pretrained(Path(folder) / "t2i")
        elif part == "audio_vae":
            from melfusion.audio.vae import AudioVAE

            pipe.audio_vae = AudioVAE.from_pretrained(Path(folder) / "audio_vae")
    if cfg.stage == "music":
        from melfusion.music.ldm import MusicLDM
        from melfusion.synapse import SynapseConfig, VisualSynapse

        # A distilled network stands for the music UNet it was fitted to, not for the one this
        # stage trains from it: the model this stage saves does not carry it.
        pipe.distilled, pipe.distilled_config = None, None

        scheduler_config = dict(pipe.music.scheduler_config)
        if cfg.key_conditioning:
            from melfusion.music.keys import with_key_embedding

            pipe.music.unet = with_key_embedding(pipe.music.unet)
        if cfg.key_mode:
            from melfusion.music.keys import with_mode_embedding

            pipe.music.unet = with_mode_embedding(pipe.music.unet)
        if cfg.prediction_type:
            scheduler_config["prediction_type"] = cfg.prediction_type
        global_dim = pipe.music.unet.time_embedding.linear_2.out_features if cfg.synapse_global else 0
        if cfg.keep_synapse:
            synapse = _kept_synapse(cfg, pipe.music.synapse, global_dim)
        else:
            syn_cfg = SynapseConfig(blocks=cfg.synapse_blocks, alpha=cfg.synapse_alpha,
                                    alpha_init=pipe.music.synapse.config.alpha_init, global_dim=global_dim)
            torch.manual_seed(as_numpy_seed(cfg.seed, 11))
            synapse = VisualSynapse.build(syn_cfg, pipe.music.unet, pipe.t2i.unet)
            # The image path starts neutral: fine-tuned from a text-only checkpoint (trained on the
            # null image), the model's first step is that checkpoint's.
            synapse.zero_projections()
        image_encoder = None
        if cfg.conditioning in NEEDS_IMAGE_ENCODER:
            from melfusion.baselines import ImageEncoder, ImageEncoderConfig

            image_encoder = ImageEncoder(ImageEncoderConfig(image_size=pipe.t2i.image_size,
                                                            out_dim=pipe.text_encoder.hidden_size))
            if cfg.conditioning == "image-encoder":
                # The synapse's layers stay; what they read is the encoder's tokens.
                n = len(synapse.config.layers)
                syn_cfg = SynapseConfig(blocks=cfg.synapse_blocks, alpha=cfg.synapse_alpha,
                                        alpha_init=syn_cfg.alpha_init, layers=synapse.config.layers,
                                        partners=["image-encoder"] * n, music_dims=synapse.config.music_dims,
                                        image_dims=[image_encoder.config.out_dim] * n)
                synapse = VisualSynapse(syn_cfg)
                synapse.zero_projections()
        pipe.music = MusicLDM(pipe.music.unet, synapse, scheduler_config)
        pipe.conditioning, pipe.image_encoder = cfg.conditioning, image_encoder
        pipe.link_synapse()
    return pipe


def _kept_synapse(cfg: TrainConfig, old, global_dim: int):
    """The init model's synapse, trained weights and statistics as they are, with a zero-started
    global path added when asked (so the stage's first step is the init model's)."""
    import dataclasses

    from melfusion.synapse import VisualSynapse

    where = cfg.source or "config"
    if cfg.conditioning != "synapse" or cfg.synapse_blocks is not None or cfg.synapse_alpha != "learned":
        raise MelFusionError(f"{where}: keep_synapse continues the init's synapse as it is: it needs "
                             "conditioning = synapse and no synapse_blocks or synapse_alpha of its own")
    if not old.config.layers:
        raise MelFusionError(f"{where}: keep_synapse: the init model has no trained synapse to continue")
    if old.config.global_dim and old.config.global_dim != global_dim:
        raise MelFusionError(f"{where}: keep_synapse: the init's synapse has a global path; set synapse_global")
    new = VisualSynapse(dataclasses.replace(old.config, global_dim=global_dim, enabled=True))
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    if unexpected or [m for m in missing if not m.startswith("global_proj.")]:
        raise MelFusionError(f"{where}: keep_synapse: the init's synapse does not fit ({(unexpected or missing)[0]})")
    return new


def check_crop(cfg: TrainConfig, pipe) -> None:
    """A music crop must fit the clips and the model's downsampling (checked before any work)."""
    if cfg.stage != "music" or cfg.crop_frames is None:
        return
    frames, multiple = pipe.frames_for(cfg.clip_seconds), pipe.frame_multiple
    if cfg.crop_frames > frames:
        raise MelFusionError(f"{cfg.source or 'config'}: crop_frames {cfg.crop_frames} is longer than the clips "
                             f"({frames} mel frames for clip_seconds {cfg.clip_seconds:g})")
    if cfg.crop_frames % multiple:
        raise MelFusionError(f"{cfg.source or 'config'}: crop_frames must be a multiple of {multiple} "
                             f"for this model, got {cfg.crop_frames}")


def load_checkpoint(cfg: TrainConfig, path: Path) -> dict:
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    if state.get("fingerprint") not in cfg.fingerprints:
        raise MelFusionError(f"the checkpoint in {path} was made with another config "
                             f"({state.get('config_source')}); refusing to resume from it")
    return state


def export_checkpoint(cfg: TrainConfig, out: str | Path, progress: bool = True) -> tuple[Path, int]:
    """The model of the run's last checkpoint (its EMA weights, as training exports), saved to `out`
    while the run goes on: a stage trained for days can be measured along the way."""
    existing = checkpoints(Path(cfg.out_dir))
    if not existing:
        raise MelFusionError(f"{cfg.out_dir} holds no checkpoint to export")
    state = load_checkpoint(cfg, existing[-1])
    train_rows, val_rows = load_entries(cfg)
    pipe = load_init(cfg)
    check_architecture(state.get("architecture"), architecture(pipe), existing[-1])
    data = stage_data(cfg, pipe, train_rows, val_rows, Path(cfg.cache_dir) if cfg.cache_dir else None, progress)
    torch.manual_seed(as_numpy_seed(cfg.seed, 13))
    stage = make_stage(cfg, pipe, data)
    ema = EMA(stage.trainable(), cfg.ema_decay)
    stage.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    ema.copy_to_params()
    stage.export(pipe)
    return pipe.save_pretrained(out), int(state["step"])


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    from accelerate import Accelerator

    out_dir = Path(cfg.out_dir)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision)
    rank, world = accelerator.process_index, accelerator.num_processes
    final = out_dir / "model"
    existing = checkpoints(out_dir)
    start_step, state = 0, None
    if existing and not resume:
        raise MelFusionError(f"{out_dir} already holds checkpoints; pass --resume to continue, "
                             "or choose another out_dir")
    if resume and existing:
        state = load_checkpoint(cfg, existing[-1])
        start_step = int(state["step"])
        if start_step >= cfg.steps and (final / "model_index.json").is_file():
            return final  # finished and exported (atomically): nothing left to do
    train_rows, val_rows = load_entries(cfg)
    if len(train_rows) < cfg.batch_size * world:
        raise MelFusionError(f"{len(train_rows)} training records are too few for batch size "
                             f"{cfg.batch_size} on {world} process(es)")
    pipe = load_init(cfg)
    arch = architecture(pipe)
    if state is not None:
        check_architecture(state.get("architecture"), arch, existing[-1])
    check_crop(cfg, pipe)
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else None
    with accelerator.main_process_first():
        data = stage_data(cfg, pipe, train_rows, val_rows, cache_dir, progress and accelerator.is_main_process)
    torch.manual_seed(as_numpy_seed(cfg.seed, 13))
    stage = make_stage(cfg, pipe, data)
    params = stage.trainable()
    optimizer = torch.optim.AdamW(param_groups(cfg, stage, params), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    ema = EMA(params, cfg.ema_decay)
    if state is not None:
        stage.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ema.load_state_dict(state["ema"])
    model, optimizer = accelerator.prepare(stage, optimizer)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    logger = Logger(out_dir, accelerator.is_main_process, start_step)
    n_train = len(train_rows)
    val_idx = torch.arange(min(cfg.val_records, len(val_rows)))
    bar = tqdm(total=cfg.steps, initial=start_step, desc=f"training {cfg.stage}", unit="step",
               disable=not (progress and accelerator.is_main_process), dynamic_ncols=True)
    clock, clock_step = time.perf_counter(), start_step
    seen = []

    def checkpoint(done: int) -> None:
        if accelerator.is_main_process:
            save_checkpoint(out_dir, done, {
                "step": done, "fingerprint": cfg.fingerprint, "config_source": cfg.source, "architecture": arch,
                "model": accelerator.unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "ema": ema.state_dict()}, cfg.keep_checkpoints)
        accelerator.wait_for_everyone()

    with StopSignal() as stop:
        for step in range(start_step, cfg.steps):
            idx = batch_indices(step, n_train, cfg.batch_size, rank, world, cfg.seed)
            seen += [train_rows[i].id for i in idx.tolist()]
            generator = torch.Generator().manual_seed(as_numpy_seed(cfg.seed, step, rank))
            loss = model(idx, generator)
            accelerator.backward(loss)
            if cfg.grad_clip:
                accelerator.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            ema.update(step)
            done = step + 1
            validate = done % cfg.val_every == 0 or done == cfg.steps
            if done % cfg.log_every == 0 or validate:
                mean_loss = accelerator.reduce(loss.detach(), "mean").item()
                if not math.isfinite(mean_loss):
                    raise MelFusionError(f"the loss became {mean_loss} at step {done}; lower lr or check the data")
                rate = (done - clock_step) / max(1e-9, time.perf_counter() - clock)
                clock, clock_step = time.perf_counter(), done
                values = {"loss": mean_loss, "lr": scheduler.get_last_lr()[0], "steps_per_s": rate,
                          **stage.log_values()}
                if validate:
                    values["val_loss"] = stage.val_loss(val_idx)
                logger.log(done, values)
                bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
            bar.update(1)
            periodic = done % cfg.checkpoint_every == 0 or done == cfg.steps
            if periodic:
                checkpoint(done)
            if done < cfg.steps and stop.requested(accelerator, world):
                if not periodic:
                    checkpoint(done)
                bar.close()
                logger.close()
                raise TrainingStopped(f"a checkpoint of step {done} of {cfg.steps} is saved in {out_dir}; "
                                      "rerun with --resume to continue")
    bar.close()
    logger.close()
    if cfg.trace_data:
        from melfusion.training.caches import digest

        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"trace-rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "world": world, "ids": seen, "weights": digest(accelerator.unwrap_model(model))}))
    ema.copy_to_params()
    stage.export(pipe)
    if accelerator.is_main_process:
        pipe.save_pretrained(final)
    accelerator.wait_for_everyone()
    return final
