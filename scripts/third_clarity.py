"""Is a clip's third decided, and is it the record's? A check of where the mode is lost.

    .venv/bin/python scripts/third_clarity.py --manifest data/synthmel-10000/manifest.jsonl \
        --split val runs/eval/pretrain-key-4000/clips [more folders of <id>.wav ...]

For each clip, the time-averaged constant-Q chroma (librosa), read relative to the record's own
tonic (the clips must be in the record's key: renders, or `generate-set --keys record`):
- third contrast (M3 - m3) / (M3 + m3), the major third's energy against the minor third's;
- "third follows": the contrast's sign is the record's mode (major > 0);
- |contrast|: how decided the third is, whichever way (0: both thirds alike);
- tonic share: the tonic's share of the chroma (1/12 = 0.083 when nothing stands out);
- the same "third follows" over only the clips whose strongest pitch class is the tonic (a clip
  on another tonic has no third of the record's to speak of).
A folder whose |contrast| is high but whose sign is at chance decides a third and picks it at
random; one whose |contrast| is near the renders' floor does not decide one at all.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def profile(path: Path) -> np.ndarray:
    import librosa

    wave, rate = librosa.load(str(path), sr=None, mono=True)
    chroma = librosa.feature.chroma_cqt(y=wave, sr=rate, hop_length=512, bins_per_octave=36)
    p = chroma.mean(axis=1)
    return p / max(p.sum(), 1e-12)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", type=Path, default=None, help="a .json report (a table is printed either way)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from melfusion.music.keys import record_tonic, NO_KEY

    records = {r["id"]: r for r in map(json.loads, args.manifest.read_text().splitlines()) if r.get("split") == args.split}
    rows = {}
    print("| clips | n | third follows the mode | mean abs contrast | tonic share | where the tonic is strongest: n | third follows |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for folder in args.folders:
        contrasts, follows, tonic_share, on_tonic = [], [], [], []
        for wav in sorted(folder.glob("*.wav")):
            rec = records.get(wav.stem)
            if rec is None or record_tonic(rec) == NO_KEY:
                continue
            p = np.roll(profile(wav), -record_tonic(rec))  # index 0 = the record's tonic
            c = (p[4] - p[3]) / max(p[4] + p[3], 1e-12)
            contrasts.append(c)
            follows.append((c > 0) == (rec["mode"] == "major"))
            tonic_share.append(p[0])
            on_tonic.append(int(np.argmax(p)) == 0)
        if not contrasts:
            print(f"error: no clip of {folder} is a {args.split} record of {args.manifest}", file=sys.stderr)
            return 2
        row = {"n": len(contrasts), "third_follows": float(np.mean(follows)),
               "abs_contrast": float(np.mean(np.abs(contrasts))), "tonic_share": float(np.mean(tonic_share)),
               "on_tonic": int(np.sum(on_tonic)),
               "third_follows_on_tonic": float(np.mean(np.array(follows)[on_tonic])) if any(on_tonic) else float("nan")}
        rows[str(folder)] = row
        print(f"| {folder} | {row['n']} | {100 * row['third_follows']:.1f}% | {row['abs_contrast']:.3f} "
              f"| {row['tonic_share']:.3f} | {row['on_tonic']} | {100 * row['third_follows_on_tonic']:.1f}% |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
