"""Many raters at once against `melfusion study serve` on loopback.

    .venv/bin/python benchmarks/bench_study_load.py [--raters 200] [--ratings 12] [--kill] [--no-media]

Builds a throwaway study (synthetic clips and pictures, 2 systems x 3 tasks), starts the real
server in a child process, and runs the raters at once (asyncio tasks, one httpx client each:
page, audio by Range request, scores). Then checks the database: every rating answered "stored"
is there, none twice. With --kill the server gets SIGKILL once half the ratings are in and is
started again on the same port; the raters retry, and each one's first page afterwards must be
its next unrated item by the database. Prints p50/p95/max latency and the total time.
Exit status 1 when a check fails.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from melfusion.apps.study import load
from melfusion.apps.study.build import create_study


def make_study(root: Path, n_records: int, clip_s: float) -> Path:
    """A manifest of `n_records` pictures and captions and two systems' clips, made into a study."""
    (root / "images").mkdir(parents=True)
    records = []
    for i in range(n_records):
        Image.new("RGB", (256, 192), (40 * i % 255, 120, 200)).save(root / "images" / f"r{i}.png")
        records.append({"id": f"r{i}", "image": f"images/r{i}.png", "caption": f"a calm piano piece, number {i}"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    t = np.arange(int(16000 * clip_s)) / 16000
    systems = {}
    for k, name in enumerate(("one", "two")):
        (root / name).mkdir()
        for r in records:
            sf.write(root / name / f"{r['id']}.wav", (0.2 * np.sin(2 * np.pi * (220 + 110 * k) * t)).astype(np.float32),
                     16000)
        systems[name] = str(root / name)
    create_study(root / "manifest.jsonl", systems, root / "study")
    return root / "study"


def ms(stats: dict) -> str:
    return ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in stats.items())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--raters", type=int, default=200)
    ap.add_argument("--ratings", type=int, default=12, help="ratings per rater")
    ap.add_argument("--records", type=int, default=4, help="manifest records (items: records x 2 systems x 3 tasks)")
    ap.add_argument("--clip-seconds", type=float, default=2.0)
    ap.add_argument("--kill", action="store_true", help="SIGKILL the server halfway and restart it")
    ap.add_argument("--no-media", action="store_true", help="skip fetching the audio")
    args = ap.parse_args()
    if args.ratings > args.records * 6:
        ap.error(f"--ratings {args.ratings} is more than the {args.records * 6} items of --records {args.records}")

    root = Path(tempfile.mkdtemp(prefix="bench-study-"))
    try:
        study = make_study(root, args.records, args.clip_seconds)
        total = args.raters * args.ratings
        killed_at = []
        with load.ServerProcess(study) as srv:

            def kill_and_restart(acked_so_far: int) -> None:
                killed_at.append(acked_so_far)
                srv.restart()

            raters, wall = load.run_raters(srv.url, args.raters, args.ratings, study_dir=study,
                                           media=not args.no_media, fault=kill_and_restart if args.kill else None,
                                           fault_after=total // 2)
        result = load.check(study, raters)
        print(f"{args.raters} raters x {args.ratings} ratings, {args.records * 6} items, "
              f"{'no media' if args.no_media else f'{args.clip_seconds:g} s clips fetched'}"
              f"{f'; server killed (SIGKILL) at {killed_at[0]} ratings and restarted' if killed_at else ''}")
        print(f"total time {wall:.2f} s ({result.acked / wall:.0f} ratings/s)")
        print(f"rating POST latency: {ms(load.percentiles([x for r in raters for x in r.post_s]))}")
        print(f"rating page latency: {ms(load.percentiles([x for r in raters for x in r.page_s]))}")
        print(f"acknowledged {result.acked} of {total}; stored {result.stored} (lost {len(result.lost)}, doubled "
              f"{len(result.doubled)}, unexplained {len(result.unexplained)}, stored with the answer lost "
              f"{result.in_doubt}); requests without an answer {sum(r.lost_requests for r in raters)}")
        if args.kill:
            resumes = [x for r in raters for x in r.resumes]
            print(f"resumes after the outage: {len(resumes)}, at the next unrated item: "
                  f"{sum(shown == nxt for shown, nxt in resumes)}")
        ok = result.ok and result.acked == total
        if not ok:
            print(f"FAILED: {result}", file=sys.stderr)
        return 0 if ok else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
