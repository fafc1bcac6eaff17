"""`melfusion data ...`: make SynthMeL, check manifests, import MusicCaps and MeLBench.

`add_data_commands(subparsers)` registers the `data` group on the main command line;
`main(argv)` runs it on its own (`python -m melfusion.data ...`).
"""
from __future__ import annotations

import argparse
import sys
import time



def _synth(args) -> int:
    from melfusion.data.synth import SynthConfig, synthesize

    cfg = SynthConfig(seed=args.seed, duration_s=args.duration, sample_rate=args.sample_rate, soundfont=args.soundfont)
    t0 = time.perf_counter()
    res = synthesize(args.n, args.out, cfg, workers=args.workers, progress=not args.quiet)
    dt = time.perf_counter() - t0
    print(f"{res['manifest']}: {args.n} records ({res['made']} made, {res['kept']} already there) in {dt:.1f} s")
    return 0


def _check(args) -> int:
    from melfusion.data.check import check_manifest

    rep = check_manifest(args.manifest, sample_rate=args.sample_rate, read_audio=not args.headers_only)
    print(rep.summary(max_lines=args.max_lines))
    return 0 if rep.ok else 1


def _import_musiccaps(args) -> int:
    from melfusion.data.importers import import_musiccaps

    res = import_musiccaps(args.csv, args.audio_dir, args.image_dir, args.out, frames=args.frames,
                           convert=not args.link_audio, sample_rate=args.sample_rate, strict=args.strict)
    print(res.summary())
    return 0


def _import_melbench(args) -> int:
    from melfusion.data.importers import import_melbench

    res = import_melbench(args.root, args.out, convert=not args.link_audio, sample_rate=args.sample_rate,
                          strict=args.strict)
    print(res.summary())
    return 0


def add_data_commands(subparsers) -> argparse.ArgumentParser:
    """Register `data` and its subcommands on an argparse subparsers object."""
    data = subparsers.add_parser("data", help="make, check and import <image, text, music> data sets",
                                 description="Make SynthMeL, check manifests, import MusicCaps and MeLBench.")
    sub = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    p = sub.add_parser("synth", help="generate a SynthMeL set (resumes an interrupted run)")
    p.add_argument("--n", type=int, required=True, help="number of triplets")
    p.add_argument("--out", required=True, help="output folder (manifest.jsonl, images/, audio/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=10.0, help="clip length in seconds (default 10)")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--soundfont", default="/usr/share/sounds/sf2/TimGM6mb.sf2")
    p.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_synth, on_interrupt="finished records are kept; rerun the same command to resume")

    p = sub.add_parser("check", help="check a manifest and its files; non-zero exit on errors")
    p.add_argument("manifest")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--headers-only", action="store_true", help="skip reading samples (no silence/clipping test)")
    p.add_argument("--max-lines", type=int, default=30, help="errors and warnings shown (default 30)")
    p.set_defaults(func=_check)

    p = sub.add_parser("import-musiccaps", help="MusicCaps / Extended MusicCaps CSV + clips + frames -> manifest")
    p.add_argument("--csv", required=True, help="musiccaps-public.csv (ytid, start_s, end_s, caption, aspect_list, ...)")
    p.add_argument("--audio-dir", required=True, help="folder of 10 s clips named after their ytid")
    p.add_argument("--image-dir", required=True, help="folder of frames named <ytid>_<k>.jpg (or in <ytid>/)")
    p.add_argument("--out", required=True, help="output folder for manifest.jsonl (and converted audio)")
    p.add_argument("--frames", choices=("all", "first"), default="all", help="one record per frame, or the first only")
    p.add_argument("--link-audio", action="store_true", help="point at the original clips instead of 16 kHz mono copies")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--strict", action="store_true", help="fail on a missing clip or frame instead of skipping it")
    p.set_defaults(func=_import_musiccaps)

    p = sub.add_parser("import-melbench", help="MeLBench genre folders (images, audio, captions) -> manifest")
    p.add_argument("root", help="MeLBench folder: one sub-folder per genre")
    p.add_argument("--out", required=True)
    p.add_argument("--link-audio", action="store_true", help="point at the original audio instead of 16 kHz mono copies")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--strict", action="store_true", help="fail on an incomplete triplet instead of skipping it")
    p.set_defaults(func=_import_melbench)
    return data


def main(argv=None) -> int:
    """`python -m melfusion.data ARGS` is `melfusion data ARGS`."""
    from melfusion.cli import main as melfusion_main

    return melfusion_main(["data", *(sys.argv[1:] if argv is None else argv)])
