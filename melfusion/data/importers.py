"""Bringing the real data sets into the manifest format.

MusicCaps / Extended MusicCaps: the published CSV (`ytid, start_s, end_s,
audioset_positive_labels, aspect_list, caption, author_id, is_balanced_subset,
is_audioset_eval`), a folder of the 10 s clips named after their ytid (`<ytid>.wav`,
`<ytid>_<start>.wav`, `<ytid>_<start>-<end>.wav`, `[<ytid>]-[<start>-<end>].wav`; wav, flac,
ogg or mp3) and, for the extension, a folder of frames (two per clip: `<ytid>_0.jpg`,
`<ytid>_1.jpg`, or `<ytid>/<anything>.jpg`). Each frame becomes one record; both frames of a
clip always land in the same split. A `split` column, when the CSV has one, is kept;
otherwise clips are split 60/20/20 by a hash of their ytid.

MeLBench: one folder per genre, holding images, audio and captions that share a file stem,
either side by side or in `images/`, `audio/`, `captions/` sub-folders; a genre folder may
hold sub-genre folders. Captions come from `<stem>.txt`, or from a `captions.csv`
(columns `name`/`id`/`file` and `caption`) or `captions.json` ({stem: caption}) in the
genre folder. MeLBench publishes no split: each genre is split 60/20/20 by a hash of the stem.

Audio is converted to 16 kHz mono 16-bit WAV under OUT/audio unless `convert=False`.
"""
from __future__ import annotations

import ast
import csv
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from melfusion.audio.io import read_audio, write_wav
from melfusion.data.manifest import SPLITS, write_manifest
from melfusion.errors import MelFusionError

AUDIO_EXT = (".wav", ".flac", ".ogg", ".mp3")
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CAPTION_EXT = (".txt",)
STRUCTURE_DIRS = {"images", "image", "audio", "audios", "music", "captions", "caption", "text", "texts"}


@dataclass
class ImportResult:
    manifest: Path
    records: int = 0
    skipped: Counter = field(default_factory=Counter)
    splits: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        lines = [f"{self.manifest}: {self.records} records ("
                 + ", ".join(f"{s} {self.splits[s]}" for s in SPLITS) + ")"]
        for why, k in sorted(self.skipped.items()):
            lines.append(f"skipped {k}: {why}")
        return "\n".join(lines)


def _hash_unit(text: str) -> float:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2 ** 64


def _split_by_hash(key: str) -> str:
    u = _hash_unit(key)
    return "train" if u < 0.6 else ("val" if u < 0.8 else "test")


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path.resolve(), root.resolve())).as_posix()


def _place_audio(src: Path, out: Path, name: str, convert: bool, sample_rate: int) -> str:
    if not convert:
        return _rel(src, out)
    dst = out / "audio" / f"{name}.wav"
    if not dst.is_file():
        write_wav(dst, read_audio(src, sample_rate), sample_rate)
    return f"audio/{name}.wav"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


# ---------------------------------------------------------------- MusicCaps

def _index_files(folder: Path, exts: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts)


def _find_clip(files_by_stem: dict[str, list[Path]], ytid: str, start: str, end: str) -> Path | None:
    for stem in (ytid, f"{ytid}_{start}", f"{ytid}_{start}-{end}", f"{ytid}_{start}_{end}", f"[{ytid}]-[{start}-{end}]"):
        if stem in files_by_stem:
            return files_by_stem[stem][0]
    return None


def _frames_for(images: list[Path], image_dir: Path, ytid: str) -> list[Path]:
    pat = re.compile(rf"^{re.escape(ytid)}(?:[_-]\d+(?:\.\d+)?)*(?:[_-](?:frame)?\d+)?$")
    out = [p for p in images if p.parent.name == ytid and p.parent != image_dir]
    out += [p for p in images if p.parent == image_dir and pat.match(p.stem)]
    return sorted(set(out))


def import_musiccaps(csv_path, audio_dir, image_dir, out, *, frames: str = "all", convert: bool = True,
                     sample_rate: int = 16000, strict: bool = False) -> ImportResult:
    csv_path, audio_dir, image_dir, out = Path(csv_path), Path(audio_dir), Path(image_dir), Path(out)
    for p, what in ((csv_path, "CSV file"), (audio_dir, "audio folder"), (image_dir, "image folder")):
        if not p.exists():
            raise MelFusionError(f"{what} not found: {p}")
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MelFusionError(f"cannot read {csv_path}: {exc}") from None
    need = {"ytid", "start_s", "end_s", "caption"}
    if not rows or not need <= set(rows[0]):
        raise MelFusionError(f"{csv_path} is not a MusicCaps CSV: it needs the columns {', '.join(sorted(need))}")
    by_stem: dict[str, list[Path]] = {}
    for p in _index_files(audio_dir, AUDIO_EXT):
        by_stem.setdefault(p.stem, []).append(p)
    images = _index_files(image_dir, IMAGE_EXT)
    out.mkdir(parents=True, exist_ok=True)
    res = ImportResult(out / "manifest.jsonl")
    records = []
    for line, row in enumerate(rows, start=2):
        ytid = row["ytid"].strip()
        start, end = row["start_s"].strip(), row["end_s"].strip()
        clip = _find_clip(by_stem, ytid, start, end)
        shots = _frames_for(images, image_dir, ytid)
        why = "clip not found" if clip is None else ("no frame found" if not shots else None)
        if why:
            if strict:
                raise MelFusionError(f"{csv_path} line {line} (ytid {ytid}): {why}")
            res.skipped[why] += 1
            continue
        try:
            audio = _place_audio(clip, out, _safe_name(ytid), convert, sample_rate)
        except MelFusionError as exc:
            if strict:
                raise MelFusionError(f"{csv_path} line {line} (ytid {ytid}): {exc}") from None
            res.skipped["audio unreadable"] += 1
            continue
        split = row.get("split", "").strip().lower() or _split_by_hash(ytid)
        split = {"valid": "val", "validation": "val", "dev": "val", "eval": "test"}.get(split, split)
        if split not in SPLITS:
            raise MelFusionError(f"{csv_path} line {line} (ytid {ytid}): unknown split {split!r}")
        try:
            aspects = ast.literal_eval(row.get("aspect_list") or "[]")
        except (ValueError, SyntaxError):
            aspects = []
        for k, shot in enumerate(shots[:1] if frames == "first" else shots):
            rec = {"id": f"{ytid}-{k}", "image": _rel(shot, out), "caption": row["caption"].strip(),
                   "audio": audio, "split": split, "ytid": ytid, "start_s": float(start), "end_s": float(end),
                   "aspects": [str(a) for a in aspects] if isinstance(aspects, list) else [],
                   "melody_id": f"musiccaps/{ytid}"}
            if row.get("is_balanced_subset"):
                rec["balanced_subset"] = row["is_balanced_subset"].strip().lower() == "true"
            records.append(rec)
            res.splits[split] += 1
    if not records:
        raise MelFusionError(f"no complete triplet found ({dict(res.skipped)}); check --audio-dir and --image-dir")
    write_manifest(res.manifest, records)
    res.records = len(records)
    return res


# ---------------------------------------------------------------- MeLBench

def _captions_table(folder: Path) -> dict[str, str]:
    table: dict[str, str] = {}
    for p in (folder / "captions.json", folder / "captions" / "captions.json"):
        if p.is_file():
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise MelFusionError(f"{p}: not valid JSON ({exc})") from None
            if isinstance(data, dict):
                table.update({Path(str(k)).stem: str(v) for k, v in data.items()})
    for p in (folder / "captions.csv", folder / "captions" / "captions.csv"):
        if p.is_file():
            with open(p, newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    key = next((row[c] for c in ("name", "id", "file", "filename", "stem") if row.get(c)), None)
                    if key and row.get("caption"):
                        table[Path(key).stem] = row["caption"].strip()
    return table


def _melbench_items(genre_dir: Path):
    """(stem, subgenre or None, image, audio, caption or None) for one genre folder."""
    groups: dict[tuple[str | None, str], dict[str, Path]] = {}
    for p in sorted(genre_dir.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(genre_dir).parts[:-1]
        sub = next((d for d in rel if d.lower() not in STRUCTURE_DIRS), None)
        ext = p.suffix.lower()
        kind = "image" if ext in IMAGE_EXT else "audio" if ext in AUDIO_EXT else "caption" if ext in CAPTION_EXT else None
        if kind:
            groups.setdefault((sub, p.stem), {})[kind] = p
    table = _captions_table(genre_dir)
    for (sub, stem), files in sorted(groups.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        cap = files["caption"].read_text(encoding="utf-8").strip() if "caption" in files else table.get(stem)
        yield stem, sub, files.get("image"), files.get("audio"), cap


def import_melbench(root, out, *, convert: bool = True, sample_rate: int = 16000, strict: bool = False) -> ImportResult:
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise MelFusionError(f"MeLBench folder not found: {root}")
    genre_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not genre_dirs:
        raise MelFusionError(f"{root} has no genre folders")
    out.mkdir(parents=True, exist_ok=True)
    res = ImportResult(out / "manifest.jsonl")
    records = []
    for gdir in genre_dirs:
        genre = gdir.name.replace("_", " ").replace("-", " ").strip().lower()
        items = []
        for stem, sub, image, audio, cap in _melbench_items(gdir):
            missing = [w for w, v in (("image", image), ("audio", audio), ("caption", cap)) if not v]
            if missing:
                if strict:
                    raise MelFusionError(f"{gdir / stem}: no {', '.join(missing)}")
                res.skipped["no " + " or ".join(missing)] += 1
                continue
            items.append((stem, sub, image, audio, cap))
        # a balanced 60/20/20 split inside each genre, ordered by a hash of the stem
        items.sort(key=lambda it: _hash_unit(f"{gdir.name}/{it[1]}/{it[0]}"))
        n = len(items)
        for rank, (stem, sub, image, audio, cap) in enumerate(items):
            split = "train" if rank < round(0.6 * n) else ("val" if rank < round(0.8 * n) else "test")
            rid = _safe_name(f"{gdir.name}-{sub + '-' if sub else ''}{stem}")
            try:
                audio_rel = _place_audio(audio, out, rid, convert, sample_rate)
            except MelFusionError as exc:
                if strict:
                    raise MelFusionError(f"{audio}: {exc}") from None
                res.skipped["audio unreadable"] += 1
                continue
            rec = {"id": rid, "image": _rel(image, out), "caption": cap, "audio": audio_rel, "split": split,
                   "genre": genre, "melody_id": f"melbench/{rid}"}
            if sub:
                rec["subgenre"] = sub.replace("_", " ").strip().lower()
            records.append(rec)
            res.splits[split] += 1
    if not records:
        raise MelFusionError(f"no complete triplet found under {root} ({dict(res.skipped)})")
    write_manifest(res.manifest, records)
    res.records = len(records)
    return res
