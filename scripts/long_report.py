"""Long pieces, measured: are the joins heard, and do time and memory grow linearly?

    python scripts/long_report.py --model DIR --n 20            # 20 pieces of 30 s; 10/30/60/120 s timed
    python scripts/long_report.py --n 2 --duration 12 --durations 10,15 --steps 4   # a quick check

1. Joins. `--n` validation captions and pictures of the manifest (SynthMeL's by default), one
   piece of `--duration` seconds each (seed = its number). At every join (where new music
   begins after a held overlap) the frame-to-frame spectral change of the log-mel
   (melfusion.long.join_report: the largest change within a frame of the join) is set against
   the same measure at every frame away from the joins: "within range" means no larger than
   the largest interior change, the rank is the share of interior frames that change less
   (about 0.5 for a join nobody could find, 1.0 for the largest change in the piece).
   A control shows the measure can see a seam: piece i cut at its first join and butted
   against piece i+1 from the same frame on (unrelated music, no hold and no cross-fade:
   what composing the windows independently and concatenating them would give).
2. Consistency. Do the tempo and the mode stay what they were? The SynthMeL judges (mode,
   energy) and the independent listeners (essentia's scale, librosa's onset rate) read the
   first and the last `--segment` seconds of each piece; the control reads the two halves of
   one 10 s clip made from the same caption, picture and seed (one window, no joins). Both
   compare segments of the same length, so the agreement rates are comparable.
3. Cost. One piece at each of `--durations`, each in a fresh process: wall time of the call
   and the peak resident memory while composing (sampled every 5 ms), above what the process
   held before the call.

Prints a table; `--out report.json` keeps every number.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_MANIFEST = ROOT / "data" / "synthmel-2000" / "manifest.jsonl"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """The largest resident set size seen while the block runs (a thread samples it)."""

    def __init__(self, every_s: float = 0.005):
        self.every_s, self.peak, self.before = every_s, 0, 0
        self._stop = threading.Event()

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(self.every_s)

    def __enter__(self):
        self.before = self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _entries(manifest, n: int):
    from melfusion.errors import MelFusionError
    from melfusion.metrics.evaluate import load_reference

    entries = load_reference(manifest, "val")
    if not 1 <= n <= len(entries):
        raise MelFusionError(f"--n must be between 1 and {len(entries)} (the validation records), got {n}")
    return entries[:n]


def _compose(pipe, entry, duration, steps, seed, solver=None):
    import torch

    from melfusion.images import load_image

    return pipe(image=load_image(entry.image_path), prompt=entry.record["caption"], duration_s=duration,
                num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), progress=False,
                solver=solver)


def _splice(first, second):
    """Control: `first` up to its first join, then `second` from the same frame on."""
    import torch

    join = first.joins[0]
    return torch.cat([first.log_mel[:, :join], second.log_mel[:, join:]], dim=1), join


def measure_joins(pipe, entries, duration, steps, solver=None, log=print) -> tuple[dict, list]:
    from melfusion.long import join_report

    pieces, outs = [], []
    for i, entry in enumerate(entries):
        clock = time.perf_counter()
        out = _compose(pipe, entry, duration, steps, seed=i, solver=solver)
        if not out.joins:
            from melfusion.errors import MelFusionError

            raise MelFusionError(f"{duration} s is not longer than the model's {pipe.window_s:g} s window: no joins")
        report = join_report(out.log_mel, out.joins)
        pieces.append({"id": entry.record.get("id"), "seconds": round(time.perf_counter() - clock, 2),
                       "windows": len(out.windows), **report.summary()})
        outs.append(out)
        log(f"  piece {i + 1}/{len(entries)} {entry.record.get('id')}: {len(out.joins)} joins, ranks "
            f"{[round(r, 2) for r in report.ranks]}, within range: {report.within_range}")
    controls = []
    for i in range(len(outs) - 1 if len(outs) > 1 else 0):
        mel, join = _splice(outs[i], outs[i + 1])
        controls.append(join_report(mel, [join]).summary())
    return {"pieces": pieces, "controls": controls, "summary": summarise(pieces, controls)}, outs


def summarise(pieces, controls) -> dict:
    def block(rows):
        ranks = [r for p in rows for r in p["join_ranks"]]
        ratio = [v / p["interior_median"] for p in rows for v in p["at_joins"]]
        within = [v <= p["interior_max"] for p in rows for v in p["at_joins"]]
        under_p95 = [v <= p["interior_p95"] for p in rows for v in p["at_joins"]]
        if not ranks:
            return {}
        return {"joins": len(ranks), "within_range": float(np.mean(within)), "under_p95": float(np.mean(under_p95)),
                "rank_mean": float(np.mean(ranks)), "rank_median": float(np.median(ranks)),
                "join_over_interior_median": float(np.median(ratio))}

    return {"joins": block(pieces), "control_splices": block(controls)}


def _readings(waves, sr, judges) -> list[dict]:
    """The judges' mode and energy and the listeners' scale and onset rate of each wave."""
    from melfusion.metrics import listeners
    from melfusion.metrics.embedders import synthmel as sm

    audio = judges[0]
    pred = audio.predict(audio.outputs(None, feats=[sm._pad_min(f) for f in sm.features_of(list(waves))]))
    rows = []
    for i, w in enumerate(waves):
        heard = listeners.listen(np.asarray(w, dtype=np.float32), sr)
        rows.append({"mode": pred["mode"][i], "energy": pred["energy"][i], "scale": heard["essentia_scale"],
                     "onsets": heard["essentia_onset_rate"]})
    return rows


def agreement(pairs) -> dict:
    """How often two readings of one piece agree: judge mode, judge energy, essentia scale; the
    mean absolute onset-rate difference (per second)."""
    if not pairs:
        return {}
    return {"pairs": len(pairs),
            **{k: float(np.mean([a[k] == b[k] for a, b in pairs])) for k in ("mode", "energy", "scale")},
            "onset_diff": float(np.mean([abs(a["onsets"] - b["onsets"]) for a, b in pairs]))}


def measure_consistency(pipe, entries, pieces, steps, segment_s=5.0, solver=None) -> dict:
    """First against last `segment_s` of each long piece; halves of a 10 s clip as the control."""
    from melfusion.metrics.embedders.synthmel import load_judges

    judges = load_judges()
    sr = pieces[0].sample_rate
    n = int(segment_s * sr)
    ends, halves = [], []
    for i, (entry, out) in enumerate(zip(entries, pieces)):
        a, b = _readings([out.audio[:n], out.audio[-n:]], sr, judges)
        ends.append((a, b))
        clip = _compose(pipe, entry, 2 * segment_s, steps, seed=i, solver=solver).audio
        a, b = _readings([clip[:n], clip[n:2 * n]], sr, judges)
        halves.append((a, b))
    return {"segment_s": segment_s, "first_last": agreement(ends), "halves_of_one_clip": agreement(halves)}


def measure_cost_here(model, manifest, duration, steps, solver=None) -> dict:
    """In this process: one piece of `duration` s, its wall time and peak memory (see --measure-one)."""
    from melfusion.loading import load_model, quiet_libraries

    quiet_libraries()
    pipe = load_model(model)
    entry = _entries(manifest, 1)[0]
    with PeakMemory() as mem:
        clock = time.perf_counter()
        out = _compose(pipe, entry, duration, steps, seed=0, solver=solver)
        wall = time.perf_counter() - clock
    return {"duration_s": duration, "windows": max(1, len(out.windows)), "wall_s": round(wall, 2),
            "peak_rss_mb": round(mem.peak / 2**20, 1), "growth_mb": round((mem.peak - mem.before) / 2**20, 1),
            "timings": {k: round(v, 2) for k, v in out.timings.items()}}


def measure_cost(args, log=print) -> list[dict]:
    rows = []
    for d in args.durations:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--measure-one", str(d), "--manifest",
               str(args.manifest)]
        if args.model:
            cmd += ["--model", str(args.model)]
        if args.steps:
            cmd += ["--steps", str(args.steps)]
        if args.solver:
            cmd += ["--solver", args.solver]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"error: measuring {d} s failed: {proc.stderr.strip().splitlines()[-1:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        log(f"  {d:>6g} s: {row['windows']:>3} windows, {row['wall_s']:>8.1f} s, peak {row['peak_rss_mb']:.0f} MB "
            f"(+{row['growth_mb']:.0f} MB while composing)")
    return rows


def print_table(result) -> None:
    s = result["joins"]["summary"]
    print("\n## Joins")
    print(f"{result['n']} pieces of {result['duration_s']:g} s (window {result['window_s']:g} s, "
          f"{result['steps']} steps)")
    print("| set | joins | within interior range | under interior p95 | mean rank | median rank | "
          "join / interior median |")
    print("|---|---|---|---|---|---|---|")
    for name, key in (("held joins", "joins"), ("control: unrelated music butted", "control_splices")):
        b = s.get(key) or {}
        if b:
            print(f"| {name} | {b['joins']} | {b['within_range']:.0%} | {b['under_p95']:.0%} | {b['rank_mean']:.2f} "
                  f"| {b['rank_median']:.2f} | {b['join_over_interior_median']:.2f} |")
    c = result.get("consistency")
    if c:
        print(f"\n## Consistency ({c['segment_s']:g} s segments)")
        print("| pair | pieces | judge mode agrees | judge energy agrees | essentia scale agrees | onset-rate gap (/s) |")
        print("|---|---|---|---|---|---|")
        for name, key in (("first and last of a long piece", "first_last"), ("control: halves of one clip", "halves_of_one_clip")):
            b = c[key]
            print(f"| {name} | {b['pairs']} | {b['mode']:.0%} | {b['energy']:.0%} | {b['scale']:.0%} | {b['onset_diff']:.2f} |")
    if result.get("cost"):
        print("\n## Time and memory")
        print("| duration (s) | windows | wall (s) | s per s of music | peak RSS (MB) | growth while composing (MB) |")
        print("|---|---|---|---|---|---|")
        for r in result["cost"]:
            print(f"| {r['duration_s']:g} | {r['windows']} | {r['wall_s']:.1f} | {r['wall_s'] / r['duration_s']:.2f} "
                  f"| {r['peak_rss_mb']:.0f} | {r['growth_mb']:.0f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model directory or preset (default: the shipped model)")
    p.add_argument("--manifest", default=str(DEFAULT_MANIFEST))
    p.add_argument("--n", type=int, default=20, help="pieces for the join statistics (validation records)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per piece for the join statistics")
    p.add_argument("--durations", default="10,30,60,120", help="comma-separated durations to time (empty: none)")
    p.add_argument("--segment", type=float, default=5.0,
                   help="seconds read at each end of a piece, and each half of the control clip (0: skip)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--solver", default=None, choices=("ddim", "dpm++2m", "unipc"))
    p.add_argument("--out", default=None, help="write every number to this JSON file")
    p.add_argument("--measure-one", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    from melfusion.errors import MelFusionError
    from melfusion.pipeline import check_duration

    try:
        args.manifest = Path(args.manifest)
        if args.measure_one is not None:
            print(json.dumps(measure_cost_here(args.model, args.manifest, check_duration(args.measure_one),
                                               args.steps, args.solver)))
            return 0
        args.durations = [check_duration(float(x)) for x in args.durations.split(",") if x.strip()]
        check_duration(args.duration)
        entries = _entries(args.manifest, args.n)
        from melfusion.loading import load_model, quiet_libraries

        quiet_libraries()
        pipe = load_model(args.model)
        steps = int(args.steps or pipe.defaults["num_inference_steps"])
        window_s = pipe.window_s
        print(f"joins: {args.n} pieces of {args.duration:g} s", file=sys.stderr)
        joins, outs = measure_joins(pipe, entries, args.duration, steps, args.solver,
                                    log=lambda m: print(m, file=sys.stderr))
        consistency = None
        if args.segment:
            print("consistency: first and last segments against halves of one clip", file=sys.stderr)
            consistency = measure_consistency(pipe, entries, outs, steps, args.segment, args.solver)
        del pipe, outs
        print("time and memory:", file=sys.stderr)
        cost = measure_cost(args, log=lambda m: print(m, file=sys.stderr)) if args.durations else []
    except MelFusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = {"model": args.model or "default", "n": args.n, "duration_s": args.duration, "steps": steps,
              "window_s": window_s, "joins": joins, "consistency": consistency, "cost": cost}
    print_table(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
