"""The manifest: JSON Lines, one <image, caption, audio> triplet per line.

Required fields: `id`, `image`, `caption`, `audio` (paths relative to the manifest's folder),
`split` ("train", "val" or "test"). Optional labels: `genre`, `subgenre`, `bpm`, `key`, `mode`,
`energy`, `instruments`, `drums`, `image_kind`, `scene`, `melody_id`, and any others.
Every problem found is reported with its line number and the record's id.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from melfusion.atomic import atomic_file
from melfusion.errors import MelFusionError

REQUIRED = {"id": str, "image": str, "caption": str, "audio": str, "split": str}
SPLITS = ("train", "val", "test")


@dataclass
class Entry:
    """One manifest line that parsed: its 1-based line number, the record, and resolved paths."""
    line: int
    record: dict
    image_path: Path
    audio_path: Path

    @property
    def id(self) -> str:
        return self.record["id"]

    def where(self) -> str:
        return f"line {self.line} (id {self.id})"


@dataclass
class Problem:
    line: int
    id: str | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}" + (f" (id {self.id})" if self.id else "") + f": {self.message}"


def read_manifest(path: str | os.PathLike) -> tuple[list[Entry], list[Problem]]:
    """Parse every line; lines that are not valid records become Problems, never exceptions."""
    path = Path(path)
    if not path.is_file():
        raise MelFusionError(f"manifest not found: {path}")
    root = path.parent
    entries: list[Entry] = []
    problems: list[Problem] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MelFusionError(f"cannot read manifest {path}: {exc}") from None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as exc:
            problems.append(Problem(n, None, f"not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(rec, dict):
            problems.append(Problem(n, None, "not a JSON object"))
            continue
        rid = rec.get("id") if isinstance(rec.get("id"), str) else None
        bad = [k for k, t in REQUIRED.items() if not isinstance(rec.get(k), t) or not rec.get(k)]
        if bad:
            problems.append(Problem(n, rid, "missing or empty field(s): " + ", ".join(bad)))
            continue
        if rec["split"] not in SPLITS:
            problems.append(Problem(n, rid, f"split {rec['split']!r} is not one of train, val, test"))
            continue
        entries.append(Entry(n, rec, root / rec["image"], root / rec["audio"]))
    if not entries and not problems:
        raise MelFusionError(f"manifest is empty: {path}")
    return entries, problems


def write_manifest(path: str | os.PathLike, records) -> Path:
    """Write records as JSON Lines atomically (a failure leaves any old manifest in place)."""
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


@dataclass
class AudioFacts:
    sample_rate: int
    channels: int
    seconds: float
    rms_db: float
    clipped_fraction: float


SILENT_DB = -60.0
CLIP_LEVEL = 0.999
CLIP_FRACTION = 1e-3


def audio_facts(path: Path, read_samples: bool = True) -> AudioFacts:
    """Header facts and (optionally) level statistics of an audio file; MelFusionError if unreadable."""
    if not path.is_file():
        raise MelFusionError("audio file missing")
    try:
        info = sf.info(str(path))
        if not read_samples:
            return AudioFacts(info.samplerate, info.channels, info.frames / info.samplerate, 0.0, 0.0)
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise MelFusionError(f"audio file unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if data.shape[0] == 0:
        raise MelFusionError("audio file has no samples")
    rms = float(np.sqrt(np.mean(np.square(data, dtype=np.float64))))
    clipped = float(np.mean(np.abs(data) >= CLIP_LEVEL))
    return AudioFacts(rate, data.shape[1], data.shape[0] / rate, 20 * np.log10(rms + 1e-12), clipped)


def audio_problems(facts: AudioFacts, sample_rate: int) -> list[str]:
    """What makes an audio file unfit for training at `sample_rate` mono."""
    out = []
    if facts.sample_rate != sample_rate:
        out.append(f"sample rate {facts.sample_rate} Hz, expected {sample_rate} Hz")
    if facts.channels != 1:
        out.append(f"{facts.channels} channels, expected mono")
    if facts.rms_db < SILENT_DB:
        out.append(f"silent audio (RMS {facts.rms_db:.1f} dBFS)")
    if facts.clipped_fraction > CLIP_FRACTION:
        out.append(f"clipped audio ({100 * facts.clipped_fraction:.2f}% of samples at full scale)")
    return out


def image_problem(path: Path) -> str | None:
    """None when the image opens and decodes, else why not."""
    from PIL import Image

    if not path.is_file():
        return "image file missing"
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as exc:
        return f"image file unreadable ({type(exc).__name__})"
    return None
