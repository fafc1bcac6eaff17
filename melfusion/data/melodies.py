"""The melody bank: real tunes from the music21 corpus, stored as scale steps so any can be
played in any key and in either mode.

A melody is a list of notes `(step, start_q, dur_q)`: `step` counts diatonic scale steps from
the tonic (0 = tonic, 2 = third, 7 = tonic an octave up, -1 = leading note below), `start_q`
and `dur_q` are in quarter notes from the first note. Chromatic alterations are dropped on
purpose: the same steps then sound major or minor depending only on the scale they are
realised in, which is what makes mode a controlled label.

The bank ships as `assets/melodies.json.gz`; `python -m melfusion.data.melodies --build`
rebuilds it from music21's corpus (needs `music21`; about a minute and a half).
"""
from __future__ import annotations

import gzip
import hashlib
import json
from functools import lru_cache
from pathlib import Path

BANK_PATH = Path(__file__).with_name("assets") / "melodies.json.gz"
MAX_QUARTERS = 64.0  # longer than any clip needs: 10 s at 180 bpm is 30 quarters
SPLITS = ("train", "train", "train", "val", "test")

# (source name, corpus folder, file pattern, voice, how many melodies at most)
SOURCES = {
    "essen": ("essenFolksong", ("altdeu10.abc", "ballad10.abc", "ballad20.abc", "kinder0.abc", "fink0.abc", "erk5.abc"), 520),
    "fiddle": ("ryansMammoth", None, 420),
    "irish": ("oneills1850", None, 320),
    "chorale": ("bach", None, 200),
    "renaissance": ("palestrina", None, 160),
}


def melody_split(melody_id: str) -> str:
    """A melody's split, fixed by its id alone (60/20/20), so no melody is ever in two splits."""
    h = int.from_bytes(hashlib.blake2b(melody_id.encode(), digest_size=8).digest(), "big")
    return SPLITS[h % 5]


@lru_cache(maxsize=1)
def load_bank(path: str | None = None) -> dict[str, list[dict]]:
    """{source: [melody, ...]}; each melody {"id", "title", "bar_q", "pickup_q", "notes": [[step, start_q, dur_q], ...]}."""
    with gzip.open(path or BANK_PATH, "rt", encoding="utf-8") as f:
        return json.load(f)


@lru_cache(maxsize=None)
def split_pool(source: str, split: str) -> tuple[int, ...]:
    """Indices of the melodies of `source` that belong to `split`."""
    return tuple(i for i, m in enumerate(load_bank()[source]) if melody_split(m["id"]) == split)


# ---------------------------------------------------------------- building (needs music21)

def _extract(score, melody_id: str, title: str, part_index: int = 0) -> dict | None:
    from music21 import meter

    parts = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]
    part = parts[min(part_index, len(parts) - 1)]
    try:
        key = score.analyze("key")
    except Exception:
        return None
    tonic = key.tonic.diatonicNoteNum  # letter-based number: steps between letters are diatonic
    ts = part.recurse().getElementsByClass(meter.TimeSignature).first()
    bar_q = float(ts.barDuration.quarterLength) if ts is not None else 4.0
    notes, first = [], None
    for n in part.flatten().notes:
        if n.isChord or n.duration.quarterLength <= 0:
            continue
        off = float(n.getOffsetInHierarchy(part))
        if first is None:
            first = off
        if off - first >= MAX_QUARTERS:
            break
        notes.append([n.pitch.diatonicNoteNum - tonic, off - first, float(n.duration.quarterLength)])
    if len(notes) < 16 or notes[-1][1] + notes[-1][2] < 12:
        return None
    # A pickup (anacrusis) is kept: `pickup_q` quarters of melody come before the first bar line.
    measures = list(part.getElementsByClass("Measure"))
    pickup = 0.0
    if len(measures) > 1 and measures[0].duration.quarterLength < bar_q:
        pickup = (float(measures[1].getOffsetInHierarchy(part)) - first) % bar_q
    steps = sorted(s for s, _, _ in notes)
    shift = -7 * round((steps[len(steps) // 2] - 3) / 7)  # median step near the fifth above the tonic
    durs = sorted(d for _, _, d in notes)
    scale = 0.5 if durs[len(durs) // 2] >= 2 else 1.0  # half-note notation (renaissance) to quarters
    return {
        "id": melody_id, "title": title, "bar_q": bar_q * scale, "pickup_q": round(pickup * scale, 4), "source_mode": key.mode,
        "notes": [[s + shift, round(o * scale, 4), round(d * scale, 4)] for s, o, d in notes],
    }


def build_bank(out: Path = BANK_PATH) -> dict[str, int]:
    try:
        import music21
        from music21 import converter
    except ImportError:
        from melfusion.errors import MelFusionError

        raise MelFusionError("rebuilding the melody bank needs music21 (pip install music21==10.5.1)") from None

    base = Path(music21.__file__).parent / "corpus"
    bank: dict[str, list[dict]] = {}
    for source, (folder, files, limit) in SOURCES.items():
        found: list[dict] = []
        paths = [base / folder / f for f in files] if files else sorted((base / folder).iterdir())
        for path in paths:
            if len(found) >= limit:
                break
            if path.suffix not in (".abc", ".mxl", ".krn", ".xml", ".musicxml"):
                continue
            try:
                parsed = converter.parse(str(path))
            except Exception:
                continue
            scores = list(parsed.scores) if hasattr(parsed, "scores") else [parsed]
            for k, score in enumerate(scores):
                if len(found) >= limit:
                    break
                if source == "chorale" and len(getattr(score, "parts", [])) != 4:
                    continue
                title = (score.metadata.title if score.metadata and score.metadata.title else path.stem)
                mel = _extract(score, f"{source}/{path.stem}/{k}", str(title))
                if mel is not None:
                    found.append(mel)
        bank[source] = found
        print(f"{source}: {len(found)} melodies", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(bank, separators=(",", ":"), sort_keys=True).encode()
    with open(out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
        f.write(data)  # mtime=0: the same corpus gives a byte-identical bank
    return {k: len(v) for k, v in bank.items()}


if __name__ == "__main__":
    import sys

    if "--build" in sys.argv:
        from melfusion.errors import MelFusionError

        try:
            print(build_bank())
        except MelFusionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
    else:
        print({k: len(v) for k, v in load_bank().items()})
