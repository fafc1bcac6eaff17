"""One training run's settings: plain values in a TOML (or JSON) file, checked before any work.

    stage = "music"                      # audio_vae | image_vae | t2i | music
    manifest = "data/synthmel-2000/manifest.jsonl"
    out_dir = "runs/small/music"
    init = "runs/small/t2i/model"        # a saved pipeline, or a preset name ("small", "tiny")
    steps = 3000
    batch_size = 16
    ...

Relative paths are read from the config file's folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from melfusion.errors import MelFusionError

STAGES = ("audio_vae", "image_vae", "t2i", "music")
CONDITIONINGS = ("synapse", "text", "tangopp", "concat", "image-encoder")


@dataclass
class TrainConfig:
    stage: str
    manifest: str
    out_dir: str
    init: str = "small"
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    val_every: int = 200
    val_records: int = 32
    cache_dir: str | None = None
    limit_records: int | None = None      # use only the first N training records (tests, smoke runs)
    clip_seconds: float = 10.0            # audio length the music and audio VAE stages see
    mixed_precision: str = "no"           # "bf16": autocast on CPUs with bf16 instructions (about 2x here)
    trace_data: bool = False              # each process writes the ids it trained on and a weight digest
    # mel frames per training crop (both UNets are convolutional): the audio VAE's crops
    # (default 256) and, when set, random crops of the music stage's latents (its validation
    # loss reads whole clips); a multiple of the model's frame multiple (16 for small)
    crop_frames: int | None = None
    # audio_vae / image_vae
    kl_weight: float = 1e-6
    # t2i / music
    prediction_type: str | None = None    # None keeps the model's
    drop_text: float = 0.05
    drop_image: float = 0.05
    drop_both: float = 0.1
    # music
    conditioning: str = "synapse"
    synapse_alpha: str | float = "learned"
    alpha_lr: float | None = None         # the learned alphas' own learning rate (None: `lr`), no weight decay
    synapse_lr: float | None = None       # the synapse's image projections' own learning rate (None: `lr`)
    high_noise_weight: float = 0.0        # timesteps drawn with density 1 + w * t / T (0: uniform)
    # parts taken from other saved models after `init` is loaded: {t2i = DIR, audio_vae = DIR}
    init_parts: dict[str, str] | None = None
    synapse_blocks: list[int] | None = None
    # beyond the paper (melfusion.synapse, "the global path"): the pooled image features into the
    # music UNet's timestep embedding, zero-started
    synapse_global: bool = False
    # continue the init model's trained synapse (projections, alphas, statistics) instead of
    # rebuilding it neutral; a global path added to it starts at zero
    keep_synapse: bool = False
    inversion_steps: int | None = None    # None: the model's default denoising steps
    itc_weight: float = 0.1               # TANGO++'s image-text contrastive loss weight
    # issue 12 D, beyond the paper: weight of the pitch-class loss on the predicted clean latent
    # (melfusion.music.harmony), computed on the first `harmony_batch` samples of each batch
    harmony_weight: float = 0.0
    harmony_batch: int = 8
    # issue 12 D, beyond the paper: a frozen mode-and-pace reader of latents (melfusion.music.reader,
    # trained by scripts/train_reader.py) reads the predicted clean latent; its cross-entropy against
    # the clip's labels, weighted by the signal level alpha_bar(t), joins the loss with this weight,
    # on the samples whose kept condition carries the labels (the caption when conditioning is
    # "text", the picture otherwise); `reader_heads`: which of its heads (None: all)
    reader: str | None = None
    reader_weight: float = 0.0
    reader_heads: list[str] | None = None
    # issue 12, beyond the paper: the music UNet reads each clip's tonic (melfusion.music.keys), a
    # zero-started key embedding added when the init model has none; dropped to "no key" at `drop_key`
    key_conditioning: bool = False
    drop_key: float = 0.1
    key_lr: float | None = None           # the key embedding's own learning rate (None: `lr`); it starts at zero
    # diagnostic J (not shipped): the key label also carries the mode, the minor entries starting as
    # copies of the tonics' (melfusion.music.keys.with_mode_embedding); needs key_conditioning
    key_mode: bool = False
    source: str = field(default="", repr=False)  # the file it was read from

    @property
    def fingerprint(self) -> str:
        """What a checkpoint must match to be resumed: everything but run-length settings. Paths
        count as written relative to the config file's folder, so a work tree that moved, or data
        reached through a link, still resumes its runs."""
        return self._digest(portable=True)

    @property
    def fingerprints(self) -> tuple[str, ...]:
        """Every digest a checkpoint of this config may carry: the current one, then the one of
        checkpoints written before paths counted relative to the config (absolute paths)."""
        return self._digest(portable=True), self._digest(portable=False)

    def _digest(self, portable: bool) -> str:
        skip = {"steps", "checkpoint_every", "keep_checkpoints", "log_every", "val_every", "source", "cache_dir",
                "trace_data"}
        data = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        # Keys added after checkpoints existed: unset, they leave the digest as it was.
        for later, unset in (("alpha_lr", None), ("synapse_lr", None), ("init_parts", None),
                             ("high_noise_weight", 0.0), ("harmony_weight", 0.0), ("harmony_batch", 8),
                             ("reader", None), ("reader_weight", 0.0), ("reader_heads", None),
                             ("key_conditioning", False), ("drop_key", 0.1), ("key_lr", None),
                             ("key_mode", False), ("synapse_global", False), ("keep_synapse", False)):
            if data.get(later) == unset:
                data.pop(later, None)
        if portable and self.source:
            base = os.path.dirname(os.path.abspath(self.source))

            def rel(p: str) -> str:
                return os.path.relpath(p, base) if os.path.isabs(p) else p

            for key in ("manifest", "out_dir", "init", "reader"):
                if data.get(key) is not None:
                    data[key] = rel(data[key])
            if data.get("init_parts"):
                data["init_parts"] = {k: rel(v) for k, v in data["init_parts"].items()}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise MelFusionError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text()) if path.suffix != ".json" else json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise MelFusionError(f"cannot parse {path}: {exc}") from None
    raw.update(overrides or {})
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"source"}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise MelFusionError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    missing = [k for k in ("stage", "manifest", "out_dir") if k not in raw]
    if missing:
        raise MelFusionError(f"{path}: missing required key {missing[0]}")
    base = path.parent
    for key in ("manifest", "out_dir", "cache_dir", "reader"):
        if raw.get(key) is not None:
            raw[key] = _resolve(base, raw[key])
    init = raw.get("init", "small")
    from melfusion.presets import PRESETS

    if init not in PRESETS:
        raw["init"] = _resolve(base, init)
    parts = raw.get("init_parts")
    if parts is not None:
        if not isinstance(parts, dict) or not all(isinstance(v, str) for v in parts.values()):
            raise MelFusionError(f"{path}: init_parts must map part names to saved model folders")
        raw["init_parts"] = {k: _resolve(base, v) for k, v in parts.items()}
    try:
        cfg = TrainConfig(**raw, source=str(path))
    except TypeError as exc:
        raise MelFusionError(f"{path}: {exc}") from None
    validate(cfg)
    return cfg


def _resolve(base: Path, p: str) -> str:
    """An absolute path for `p` read from the folder `base`, with links left as they are (a run whose
    data/ is a link into a state folder keeps its paths, and so its checkpoints, when the link moves)."""
    return p if Path(p).is_absolute() else os.path.abspath(base / p)


INIT_PARTS = ("t2i", "audio_vae")


def validate(cfg: TrainConfig) -> None:
    where = cfg.source or "config"
    if cfg.stage not in STAGES:
        raise MelFusionError(f"{where}: stage must be one of {', '.join(STAGES)}, not {cfg.stage!r}")
    if cfg.conditioning not in CONDITIONINGS:
        raise MelFusionError(f"{where}: conditioning must be one of {', '.join(CONDITIONINGS)}")
    if not Path(cfg.manifest).is_file():
        raise MelFusionError(f"{where}: manifest not found: {cfg.manifest}")
    from melfusion.presets import PRESETS

    if cfg.init not in PRESETS and not (Path(cfg.init) / "model_index.json").is_file():
        raise MelFusionError(f"{where}: init must be a preset name or a saved model directory: {cfg.init}")
    if cfg.init_parts and cfg.stage != "music":
        raise MelFusionError(f"{where}: init_parts is for the music stage")
    for part, folder in (cfg.init_parts or {}).items():
        if part not in INIT_PARTS:
            raise MelFusionError(f"{where}: init_parts can take {', '.join(INIT_PARTS)}, not {part!r}")
        if not (Path(folder) / "model_index.json").is_file():
            raise MelFusionError(f"{where}: init_parts {part}: not a saved model directory: {folder}")
    for key in ("steps", "batch_size", "checkpoint_every", "log_every", "val_every", "crop_frames"):
        value = getattr(cfg, key)
        if value is not None and int(value) < 1:
            raise MelFusionError(f"{where}: {key} must be at least 1")
    if not 0 <= cfg.high_noise_weight <= 100:
        raise MelFusionError(f"{where}: high_noise_weight must be between 0 and 100")
    if not 0 <= cfg.harmony_weight <= 1000:
        raise MelFusionError(f"{where}: harmony_weight must be between 0 and 1000")
    if cfg.harmony_weight and cfg.stage != "music":
        raise MelFusionError(f"{where}: harmony_weight is for the music stage")
    if int(cfg.harmony_batch) < 1:
        raise MelFusionError(f"{where}: harmony_batch must be at least 1")
    if not 0 <= cfg.reader_weight <= 100:
        raise MelFusionError(f"{where}: reader_weight must be between 0 and 100")
    if cfg.reader_weight:
        from melfusion.music.reader import LABELS, is_saved_reader

        if cfg.stage != "music":
            raise MelFusionError(f"{where}: reader_weight is for the music stage")
        if not is_saved_reader(cfg.reader):
            raise MelFusionError(f"{where}: reader_weight needs `reader`, a saved reader folder "
                                 f"(scripts/train_reader.py makes one): {cfg.reader}")
        bad = [h for h in (cfg.reader_heads or []) if h not in LABELS]
        if bad or cfg.reader_heads == []:
            raise MelFusionError(f"{where}: reader_heads must name some of {', '.join(LABELS)}")
    if cfg.key_conditioning and cfg.stage != "music":
        raise MelFusionError(f"{where}: key_conditioning is for the music stage")
    if cfg.key_mode and not cfg.key_conditioning:
        raise MelFusionError(f"{where}: key_mode needs key_conditioning = true")
    if not 0 <= cfg.drop_key <= 1:
        raise MelFusionError(f"{where}: drop_key must be between 0 and 1")
    if cfg.key_lr is not None and not cfg.key_lr > 0:
        raise MelFusionError(f"{where}: key_lr must be > 0")
    if cfg.synapse_lr is not None and not cfg.synapse_lr > 0:
        raise MelFusionError(f"{where}: synapse_lr must be > 0")
    if cfg.lr <= 0 or not 0 <= cfg.ema_decay < 1:
        raise MelFusionError(f"{where}: lr must be > 0 and ema_decay in [0, 1)")
    if cfg.alpha_lr is not None and not cfg.alpha_lr > 0:
        raise MelFusionError(f"{where}: alpha_lr must be > 0")
    if cfg.mixed_precision not in ("no", "bf16"):
        raise MelFusionError(f"{where}: mixed_precision must be 'no' or 'bf16'")
    if cfg.prediction_type not in (None, "epsilon", "v_prediction"):
        raise MelFusionError(f"{where}: prediction_type must be 'epsilon' or 'v_prediction'")
