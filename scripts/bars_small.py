"""Check issue 5's or issue 12's bars on the reports that scripts/evaluate_small.sh writes.

    .venv/bin/python scripts/bars_small.py [runs/eval] [--issue 5|12]

Reads melfusion.json, text-only.json and shuffled-images.json and prints one line per bar with
the measured figures and PASS or MISS (and by how much). Issue 12's listener bars (pictures the
model never saw) are scripts/heldout_listen.py's. Exit status 0 whatever the outcome: this
reports, it does not gate.
"""
from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path


def bars(model: dict, text: dict, shuffled: dict, control: dict | None = None) -> list[tuple[str, bool, str]]:
    """`control`: the model's report on exactly the shuffled run's records, when that run made fewer."""
    m, t, s = model["accuracy"], text["accuracy"], shuffled["accuracy"]
    c = (control or model)["accuracy"]
    out = [("genre >= 60%", m["genre"] >= 0.60, f"{m['genre']:.1%} (text-only {t['genre']:.1%})")]
    for key, floor in (("energy", 0.75), ("mode", 0.65)):
        out.append((f"{key} >= {floor:.0%}", m[key] >= floor, f"{m[key]:.1%}"))
        gap = m[key] - t[key]
        out.append((f"{key} >= text-only + 15 points", gap >= 0.15,
                    f"{m[key]:.1%} vs {t[key]:.1%} ({gap * 100:+.1f} points)"))
    for key in ("fad", "fd"):
        out.append((f"{key.upper()} below text-only", model[key] < text[key],
                    f"{model[key]:.3f} vs {text[key]:.3f}"))
    for key in ("mode", "energy"):
        out.append((f"shuffled images worse on {key}", s[key] < c[key],
                    f"{s[key]:.1%} vs {c[key]:.1%} with the right images ({shuffled['n']} records)"))
    return out


def bars_12(model: dict, text: dict, shuffled: dict, control: dict | None = None) -> list[tuple[str, bool, str]]:
    """Issue 12's bars on the test split: the model against the text-only baseline from the same
    checkpoint and steps, and the shuffled-image control against text-only (within 5 points)."""
    m, t, s = model["accuracy"], text["accuracy"], shuffled["accuracy"]
    out = [("genre >= 75%", m["genre"] >= 0.75, f"{m['genre']:.1%} (text-only {t['genre']:.1%})")]
    for key, floor, lead in (("energy", 0.80, 0.20), ("mode", 0.70, 0.15)):
        out.append((f"{key} >= {floor:.0%}", m[key] >= floor, f"{m[key]:.1%}"))
        gap = m[key] - t[key]
        out.append((f"{key} >= text-only + {lead * 100:.0f} points", gap >= lead,
                    f"{m[key]:.1%} vs {t[key]:.1%} ({gap * 100:+.1f} points)"))
    for key, ceiling in (("fd", 30.0), ("fad", 20.0)):
        out.append((f"{key.upper()} <= {ceiling:g}", model[key] <= ceiling, f"{model[key]:.2f}"))
        out.append((f"{key.upper()} below text-only", model[key] < text[key],
                    f"{model[key]:.3f} vs {text[key]:.3f}"))
    for key in ("mode", "energy"):
        gap = s[key] - t[key]
        out.append((f"shuffled images within 5 points of text-only on {key}", abs(gap) <= 0.05,
                    f"{s[key]:.1%} vs {t[key]:.1%} ({gap * 100:+.1f} points; with the right images "
                    f"{(control or model)['accuracy'][key]:.1%}, {shuffled['n']} records)"))
    return out


def against_shipped(model: dict, shipped: dict) -> list[tuple[str, bool, str]]:
    """The new model against the shipped default on the same records: higher accuracies, lower
    FD and FAD (a tie counts as not beating it)."""
    out = []
    for key in ("genre", "mode", "energy"):
        a, b = model["accuracy"][key], shipped["accuracy"][key]
        out.append((f"{key} against the shipped default", a > b, f"{a:.1%} vs {b:.1%} ({(a - b) * 100:+.1f} points)"))
    for key in ("fd", "fad"):
        out.append((f"{key.upper()} against the shipped default", model[key] < shipped[key],
                    f"{model[key]:.2f} vs {shipped[key]:.2f}"))
    return out


@functools.lru_cache(maxsize=None)
def _records(manifest: str) -> dict[str, dict]:
    """The manifest's records by id, read once however many comparisons use it."""
    with open(manifest) as f:
        return {r["id"]: r for r in map(json.loads, filter(str.strip, f))}


def paired(a: dict, b: dict, key: str) -> tuple[int, int, int, float] | None:
    """Records on which `a` is right and `b` wrong, the reverse, the records both scored, and the exact
    two-sided sign-test p-value over those discordant pairs (McNemar's exact test). None when either
    report predates per-record predictions."""
    pa, pb = a.get("predictions"), b.get("predictions")
    if not pa or not pb:
        return None
    truth = _records(a["reference"])
    shared = sorted(set(pa) & set(pb))
    right_a = sum(pa[i][key] == truth[i][key] and pb[i][key] != truth[i][key] for i in shared)
    right_b = sum(pb[i][key] == truth[i][key] and pa[i][key] != truth[i][key] for i in shared)
    k, n = min(right_a, right_b), right_a + right_b
    p = min(1.0, 2 * sum(math.comb(n, j) for j in range(k + 1)) / 2**n) if n else 1.0
    return right_a, right_b, len(shared), p


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Issue 5's or 12's bars on evaluate_small.sh's reports.")
    parser.add_argument("root", nargs="?", default="runs/eval")
    parser.add_argument("--issue", type=int, choices=(5, 12), default=5)
    args = parser.parse_args()
    root = Path(args.root)
    reports = {name: json.loads((root / f"{name}.json").read_text())
               for name in ("melfusion", "text-only", "shuffled-images")}
    n = {name: r.get("n", r.get("records")) for name, r in reports.items()}
    control_path = root / "melfusion-control.json"  # the model on the shuffled run's records, if it made fewer
    control = json.loads(control_path.read_text()) if control_path.is_file() else None
    print(f"records scored: {n}")
    check = bars_12 if args.issue == 12 else bars
    for name, ok, figures in check(reports["melfusion"], reports["text-only"], reports["shuffled-images"], control):
        print(f"{'PASS' if ok else 'MISS'}  {name:50s} {figures}")
    shipped_path = root / "shipped.json"  # the shipped default on the same records (evaluate_issue12.sh)
    if shipped_path.is_file():
        for name, ok, figures in against_shipped(reports["melfusion"], json.loads(shipped_path.read_text())):
            print(f"{'BEATS' if ok else 'LOSES'} {name:50s} {figures}")
    for other in ("text-only", "shuffled-images"):
        for key in ("mode", "energy"):
            pair = paired(reports["melfusion"], reports[other], key)
            if pair:
                a, b, n, p = pair
                print(f"paired {key:6s} vs {other:15s} on {n} records: right only with melfusion {a}, "
                      f"only with {other} {b} (exact sign test p = {p:.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
