"""The shuffled-image control (appendix E.5), read both ways: how often the judges' labels of a
`generate-set --shuffle-images SEED` set match each record's own labels, and how often they match
the labels of the record whose picture it borrowed; and how often the borrowed labels agree with
the own ones, which sets what "chance" is for this one shuffle.

    .venv/bin/python scripts/shuffled_control.py runs/eval/NAME-judges.json --seed 0
        [--manifest data/synthmel-2000/manifest.jsonl] [--split test]

A model whose mode and energy come from the picture follows the borrowed picture's labels and
falls to chance on its own; genre, from the caption, does the reverse.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("judges", help="the judges' report of the shuffled set (melfusion evaluate --out)")
    ap.add_argument("--seed", type=int, required=True, help="the --shuffle-images seed the set was made with")
    ap.add_argument("--manifest", default="data/synthmel-2000/manifest.jsonl")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    from melfusion.metrics.cli import shuffled_images

    records = {}
    for line in Path(args.manifest).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            records[r["id"]] = r
    borrowed = shuffled_images([i for i, r in records.items() if r["split"] == args.split], args.seed)
    predictions = json.loads(Path(args.judges).read_text())["predictions"]
    print(f"{len(predictions)} clips, shuffle seed {args.seed}")
    print("| label | = own record's | = borrowed picture's record's | borrowed = own (this shuffle's chance) |")
    print("| --- | ---: | ---: | ---: |")
    for label in ("genre", "mode", "energy"):
        own = sum(p[label] == records[i][label] for i, p in predictions.items()) / len(predictions)
        other = sum(p[label] == records[borrowed[i]][label] for i, p in predictions.items()) / len(predictions)
        agree = sum(records[i][label] == records[borrowed[i]][label] for i in predictions) / len(predictions)
        print(f"| {label} | {own:.1%} | {other:.1%} | {agree:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
