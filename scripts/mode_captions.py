"""Issue 12's diagnostic A: a copy of a manifest whose captions also state the mode (and, with
--energy, the pace; with --key, the whole key: "in Ab minor"), pointing at the same image and
audio files.

    .venv/bin/python scripts/mode_captions.py data/synthmel-10000/manifest.jsonl data/synthmel-10000-modecap
    .venv/bin/python scripts/mode_captions.py data/synthmel-10000/manifest.jsonl data/synthmel-10000-keycap --key

A text-only model fine-tuned on these captions shows whether the diffusion loss and the model's
capacity can carry a piece's mode at all when it is handed over plainly: if the music cannot
follow "in a minor key" in the caption, no picture will make it follow. The audio and image
caches are shared with the source manifest (they are keyed by files, not captions).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PHRASE = {"major": "in a major key", "minor": "in a minor key"}
PACE = {"driving": "driving and busy", "calm": "calm and sparse"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest")
    ap.add_argument("out")
    ap.add_argument("--energy", action="store_true", help="state the pace too")
    ap.add_argument("--key", action="store_true", help="state the key (tonic and mode) instead of the mode alone")
    args = ap.parse_args()
    from melfusion.data.manifest import read_manifest, write_manifest
    from melfusion.errors import MelFusionError

    try:
        entries, problems = read_manifest(args.manifest)
        if problems:
            raise MelFusionError(f"{args.manifest}: {len(problems)} broken line(s)")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        records = []
        for e in entries:
            if e.record.get("mode") not in PHRASE:
                raise MelFusionError(f"record {e.id} has no mode label")
            r = dict(e.record)
            pace = f", {PACE[r['energy']]}" if args.energy else ""
            if args.key:
                # First, so that the 0.3% of captions the key phrase takes past 77 tokens lose their end.
                tonic, _, mode = str(r.get("key", "")).partition(" ")
                if mode != r["mode"] or not tonic:
                    raise MelFusionError(f"record {e.id}: key {r.get('key')!r} does not name its mode")
                r["caption"] = f"In {tonic} {mode}{pace}. {r['caption']}"
            else:
                r["caption"] = f"{r['caption'].rstrip('. ')}, {PHRASE[r['mode']]}{pace}."
            r["image"] = os.path.relpath(e.image_path, out)
            r["audio"] = os.path.relpath(e.audio_path, out)
            records.append(r)
        path = write_manifest(out / "manifest.jsonl", records)
    except MelFusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: {len(records)} records, captions stating the {'key' if args.key else 'mode'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
