"""Pick the fine-tuned model's default image guidance on validation records, never on test.

    .venv/bin/python scripts/pick_image_guidance.py --model runs/small/music-finetune/model \
        --out runs/eval/issue12-val [--scales 3 5 8] [--limit 96] [--write]

For each scale: `generate-set` on the first LIMIT records of SynthMeL 10,000's val split (each
record's own picture), the SynthMeL judges and the independent listeners (scripts/listen_set.py).
The rule, fixed before any figure is seen: the largest judge mode + energy accuracy among the
scales whose genre accuracy is at least 75% and whose FD is at most 10% above the plain
scale's (the first one given, which is the model's guidance: the picture weighted like the
caption); ties go to the smaller scale (fewer passes). `--write` stores the choice in the model
folder's defaults (`image_guidance_scale`, nothing stored when the plain scale wins). Resumable:
finished clips and reports are kept.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import set_defaults  # noqa: E402  (scripts/set_defaults.py)
MANIFEST = ROOT / "data" / "synthmel-10000" / "manifest.jsonl"


def run(args: list[str]) -> None:
    subprocess.run(args, check=True)


def measure(model: Path, scale: float, out: Path, limit: int, jobs: int) -> dict:
    folder = out / f"ig-{scale:g}"
    mf = str(ROOT / ".venv" / "bin" / "melfusion")
    py = str(ROOT / ".venv" / "bin" / "python")
    base = [mf, "generate-set", "--manifest", str(MANIFEST), "--split", "val", "--limit", str(limit),
            "--model", str(model), "--image-guidance", f"{scale:g}", "--out", str(folder), "--quiet"]
    if jobs > 1:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        procs = [subprocess.Popen(base + ["--shard", f"{k}/{jobs}"], env=env) for k in range(jobs)]
        if any(p.wait() for p in procs):
            raise SystemExit(f"error: generate-set failed for image guidance {scale:g}")
    else:
        run(base)
    judges = out / f"ig-{scale:g}.json"
    if not judges.exists():
        run([mf, "evaluate", "--generated", str(folder), "--reference", str(MANIFEST), "--split", "val",
             "--subset", "--name", f"ig-{scale:g}", "--out", str(judges)])
    listeners = out / f"ig-{scale:g}-listeners.json"
    if not listeners.exists():
        run([py, str(ROOT / "scripts" / "listen_set.py"), str(folder), "--manifest", str(MANIFEST),
             "--split", "val", "--out", str(listeners)])
    j, l = json.loads(judges.read_text()), json.loads(listeners.read_text())
    return {"scale": scale, "fd": j["fd"], "fad": j["fad"], **j["accuracy"],
            **{k: v for k, v in l.items() if k != "clips"}}


def choose(rows: list[dict]) -> dict:
    plain = rows[0]
    ok = [r for r in rows if r["genre"] >= 0.75 and r["fd"] <= 1.10 * plain["fd"]]
    if not ok:
        return plain
    return max(ok, key=lambda r: (round(r["mode"] + r["energy"], 6), -r["scale"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "runs" / "small" / "music-finetune" / "model")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "eval" / "issue12-val")
    ap.add_argument("--scales", type=float, nargs="+", default=[3.0, 5.0, 8.0])
    ap.add_argument("--limit", type=int, default=96)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="store the choice in the model's defaults")
    args = ap.parse_args()
    index_path = args.model / "model_index.json"
    if not index_path.exists():
        print(f"error: {args.model} is not a saved model (no model_index.json)", file=sys.stderr)
        return 2
    index = json.loads(index_path.read_text())
    if index.get("conditioning") == "text":
        print(f"error: {args.model} is a text-only model: it has no image guidance", file=sys.stderr)
        return 2
    guidance = float(index["defaults"].get("guidance_scale", 3.0))
    if args.scales[0] != guidance:
        print(f"error: the first scale must be the model's guidance ({guidance:g}), the plain reference",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [measure(args.model, s, args.out, args.limit, args.jobs) for s in args.scales]
    best = choose(rows)
    cols = ["scale", "genre", "mode", "energy", "fd", "fad", "scale_follows", "key_profile_gap",
            "onset_gap_librosa", "onset_gap_essentia"]
    lines = ["| image guidance | genre | mode | energy | FD | FAD | essentia scale right | key-profile gap"
             " | onsets/s busy - calm (librosa) | (essentia) |", "|" + " ---: |" * len(cols)]
    for r in rows:
        cells = [f"{r['scale']:g}"] + [f"{100 * r[k]:.1f}%" for k in ("genre", "mode", "energy")]
        cells += [f"{r['fd']:.2f}", f"{r['fad']:.2f}", f"{100 * r['scale_follows']:.1f}%",
                  f"{r['key_profile_gap']:+.3f}", f"{r['onset_gap_librosa']:+.2f}", f"{r['onset_gap_essentia']:+.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nchosen on {args.limit} val records: image guidance {best['scale']:g}")
    report = "\n".join(lines)
    (args.out / "pick.md").write_text(report + "\n")
    (args.out / "pick.json").write_text(json.dumps({"rows": rows, "chosen": best["scale"]}, indent=1))
    print(report)
    if args.write:  # through set_defaults, which checks that the model takes the value
        value = "null" if best["scale"] == guidance else f"{best['scale']:g}"
        return set_defaults.main([str(args.model), f"image_guidance_scale={value}"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
