"""`melfusion data check MANIFEST`: what is wrong with a manifest and its files, and its make-up.

Errors (non-zero exit): broken lines, missing fields, duplicate ids, missing or unreadable
images and audio, wrong sample rate, stereo, silent or clipped audio, the same audio or the
same melody in two splits. Warnings: durations far from the median, genre imbalance.
"""
from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from melfusion.data.manifest import SPLITS, audio_facts, audio_problems, image_problem, read_manifest
from melfusion.errors import MelFusionError

IMBALANCE_RATIO = 1.5      # most / fewest records per genre before a warning
DURATION_SLACK_S = 0.5     # distance from the median duration before a warning


@dataclass
class CheckReport:
    manifest: str
    records: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    splits: Counter = field(default_factory=Counter)
    genres: dict = field(default_factory=lambda: defaultdict(Counter))   # genre -> split -> count
    labels: dict = field(default_factory=lambda: defaultdict(Counter))   # label name -> value -> count

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self, max_lines: int = 30) -> str:
        out = [f"manifest: {self.manifest}", f"records:  {self.records}"]
        if self.splits:
            total = sum(self.splits.values())
            out.append("splits:   " + ", ".join(f"{s} {self.splits[s]} ({100 * self.splits[s] / total:.0f}%)" for s in SPLITS))
        if self.durations:
            d = np.array(self.durations)
            out.append(f"duration: min {d.min():.2f} s, mean {d.mean():.2f} s, max {d.max():.2f} s, total {d.sum() / 3600:.2f} h")
        if self.genres:
            out.append("genres (train/val/test):")
            for g in sorted(self.genres):
                c = self.genres[g]
                out.append(f"  {g:<20} {sum(c.values()):>5}  ({c['train']}/{c['val']}/{c['test']})")
        for name in ("mode", "energy", "image_kind", "drums"):
            if name in self.labels:
                out.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in sorted(self.labels[name].items(), key=str)))
        for title, items in (("errors", self.errors), ("warnings", self.warnings)):
            if items:
                out.append(f"{len(items)} {title}:")
                out += [f"  {x}" for x in items[:max_lines]]
                if len(items) > max_lines:
                    out.append(f"  ... and {len(items) - max_lines} more")
        out.append("result: " + ("OK" if self.ok else f"FAILED ({len(self.errors)} errors)"))
        return "\n".join(out)


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_manifest(path, sample_rate: int = 16000, read_audio: bool = True) -> CheckReport:
    """Check every record; `read_audio=False` checks headers only (no silence/clipping test)."""
    entries, problems = read_manifest(path)
    rep = CheckReport(manifest=str(path), records=len(entries))
    rep.errors += [str(p) for p in problems]

    first_line: dict[str, int] = {}
    audio_split: dict[str, tuple[str, str]] = {}     # digest -> (split, where)
    melody_split: dict[str, tuple[str, str]] = {}    # melody id -> (split, where)
    for e in entries:
        rec, where = e.record, e.where()
        if e.id in first_line:
            rep.errors.append(f"{where}: duplicate id (first on line {first_line[e.id]})")
        else:
            first_line[e.id] = e.line
        rep.splits[rec["split"]] += 1
        if "genre" in rec:
            rep.genres[str(rec["genre"])][rec["split"]] += 1
        for name in ("mode", "energy", "image_kind", "drums"):
            if name in rec:
                rep.labels[name][str(rec[name])] += 1
        msg = image_problem(e.image_path)
        if msg:
            rep.errors.append(f"{where}: {msg}: {rec['image']}")
        try:
            facts = audio_facts(e.audio_path, read_samples=read_audio)
        except MelFusionError as exc:
            rep.errors.append(f"{where}: {exc}: {rec['audio']}")
            continue
        rep.durations.append(facts.seconds)
        for msg in audio_problems(facts, sample_rate):
            rep.errors.append(f"{where}: {msg}: {rec['audio']}")
        digest = _digest(e.audio_path)
        if digest in audio_split and audio_split[digest][0] != rec["split"]:
            other = audio_split[digest]
            rep.errors.append(f"{where}: the same audio is in split {other[0]} at {other[1]} and in {rec['split']}")
        audio_split.setdefault(digest, (rec["split"], where))
        mel = rec.get("melody_id")
        if mel:
            if mel in melody_split and melody_split[mel][0] != rec["split"]:
                other = melody_split[mel]
                rep.errors.append(f"{where}: melody {mel} is in split {other[0]} at {other[1]} and in {rec['split']}")
            melody_split.setdefault(mel, (rec["split"], where))

    if rep.durations:
        d = np.array(rep.durations)
        med = float(np.median(d))
        far = [(e, x) for e, x in zip([e for e in entries if e.audio_path.is_file()], d) if abs(x - med) > DURATION_SLACK_S]
        for e, x in far[:20]:
            rep.warnings.append(f"{e.where()}: duration {x:.2f} s, median is {med:.2f} s")
        if len(far) > 20:
            rep.warnings.append(f"... {len(far) - 20} more records far from the median duration")
    if len(rep.genres) > 1:
        counts = {g: sum(c.values()) for g, c in rep.genres.items()}
        lo, hi = min(counts.values()), max(counts.values())
        if lo == 0 or (hi / lo > IMBALANCE_RATIO and hi - lo > 1):
            rep.warnings.append(f"genres are unbalanced: {max(counts, key=counts.get)} has {hi} records, "
                                f"{min(counts, key=counts.get)} has {lo}")
    return rep
