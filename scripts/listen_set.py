"""The independent listeners on a generated set (`generate-set`'s `<id>.wav` per record): how often
the music's scale is the record's mode, and the key-profile and onset gaps between its labels.

    .venv/bin/python scripts/listen_set.py GEN_DIR --manifest M --split test [--out listen.json]

The records' labels play the pictures' part: major/minor for warm/cool, driving/calm for busy/calm
(melfusion.metrics.listeners.following); records with a `key` also give how often essentia hears
that tonic and that key (the tonic the clip was composed in, where GEN_DIR/keys.json gives it),
with a `bpm` how the onset rate goes with the tempo. Each clip's reading is cached in GEN_DIR/listen.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _key(tonic: str | None, record: dict) -> str | None:
    """The key a clip should be in: the tonic it was given (or the record's) in the record's mode."""
    if tonic is None:
        return record.get("key")
    return None if tonic == "none" else f"{tonic} {record['mode']}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("generated")
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from melfusion.errors import MelFusionError
    from melfusion.metrics.evaluate import load_reference
    from melfusion.metrics.listeners import following, listen_folder

    gen = Path(args.generated)
    try:
        entries = [e for e in load_reference(args.manifest, args.split) if (gen / f"{e.id}.wav").is_file()]
        if not entries:
            raise MelFusionError(f"{gen} holds no clips of the {args.split} split of {args.manifest}")
        heard = listen_folder(gen, [e.id for e in entries])
        # A model with key conditioning composed in the keys generate-set wrote down.
        given = json.loads((gen / "keys.json").read_text()) if (gen / "keys.json").is_file() else {}
        rows = [{**heard[e.id], "warm": e.record["mode"] == "major", "busy": e.record["energy"] == "driving",
                 "key": _key(given.get(e.id), e.record), "bpm": e.record.get("bpm")} for e in entries]
    except MelFusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = following(rows)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
