"""The `melfusion` command line.

    melfusion generate --image cover.png --text "warm bossa nova with nylon guitar" --out song.wav
    melfusion generate ... --out song.wav --duration 90 --without-image plain.wav --variations 3
    melfusion info --preset paper
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from melfusion.errors import MelFusionError
from melfusion.loading import load_model, quiet_libraries

MAX_VARIATIONS = 16


def check_output(path, flag: str, suffix: str = ".wav") -> Path:
    """An output file the run may write: the right suffix, not a folder, in a folder this user may write to."""
    out = Path(path)
    if out.suffix.lower() != suffix:
        raise MelFusionError(f"{flag} must name a {suffix} file, got {out}")
    if out.is_dir():
        raise MelFusionError(f"{flag} is a directory: {out}")
    folder = out.absolute().parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise MelFusionError(f"cannot write {out}: {folder} is not a folder this user may write to")
    return out


def numbered(path, index: int, count: int) -> Path | None:
    """With --variations N > 1 every output is numbered: song.wav -> song-1.wav ... song-N.wav."""
    if path is None:
        return None
    path = Path(path)
    return path if count == 1 else path.with_name(f"{path.stem}-{index}{path.suffix}")


def parse_loudness(text: str | None) -> float | bool:
    """--loudness: a target in LUFS, or "off" (False: the model's output as it comes)."""
    from melfusion.audio.loudness import DEFAULT_LOUDNESS_LUFS, check_loudness

    if text is None:
        return DEFAULT_LOUDNESS_LUFS
    if text.strip().lower() == "off":
        return False
    try:
        value = float(text)
    except ValueError:
        raise MelFusionError(f"--loudness takes a loudness in LUFS (e.g. -14) or off, got {text!r}") from None
    return check_loudness(value)


def cmd_generate(args) -> int:
    import torch

    from melfusion.audio.io import write_wav
    from melfusion.images import load_image
    from melfusion.pipeline import check_duration, check_guided_steps, check_prompt, check_teacher_steps

    out = check_output(args.out, "--out")
    plain = check_output(args.without_image, "--without-image") if args.without_image else None
    if plain is not None and plain.absolute() == out.absolute():
        raise MelFusionError("--without-image must name another file than --out")
    if not 1 <= args.variations <= MAX_VARIATIONS:
        raise MelFusionError(f"--variations must be between 1 and {MAX_VARIATIONS}, got {args.variations}")
    loudness = parse_loudness(args.loudness)
    if args.video and Path(args.video).suffix.lower() != ".mp4":
        raise MelFusionError(f"--video must name an .mp4 file, got {args.video}")
    if args.video:
        from melfusion.apps.video import ffmpeg_exe

        ffmpeg_exe()  # fail before composing, not after
    if args.spectrogram and Path(args.spectrogram).suffix.lower() != ".png":
        raise MelFusionError(f"--spectrogram must name a .png file, got {args.spectrogram}")
    # Check the cheap things before loading any model.
    prompt = check_prompt(args.text)
    image = load_image(args.image)
    if args.duration is not None:
        check_duration(args.duration)
    if args.seed < 0:
        raise MelFusionError("--seed must be a non-negative integer")
    check_guided_steps(args.guided_steps)
    check_teacher_steps(args.teacher_steps)
    if args.key is not None:
        from melfusion.music.keys import parse_key

        parse_key(args.key)
    quiet_libraries()
    pipe = load_model(args.model, seed=args.seed)
    if plain is not None and not pipe.has_null_image:
        raise MelFusionError(f"--without-image: {pipe.no_null_image_reason()}")
    settings = dict(prompt=prompt, duration_s=args.duration, num_inference_steps=args.steps,
                    guidance_scale=args.guidance, image_guidance_scale=args.image_guidance,
                    progress=not args.quiet, solver=args.solver, precision=args.precision, loudness_lufs=loudness,
                    key=args.key, guided_steps=args.guided_steps, key_guidance=on_off(args.key_guidance),
                    distilled=on_off(args.distilled), teacher_steps=args.teacher_steps)
    n = args.variations
    for i in range(1, n + 1):
        seed = args.seed + i - 1
        result = pipe(image=image, generator=torch.Generator().manual_seed(seed), **settings)
        target = numbered(out, i, n)
        write_wav(target, result.audio, result.sample_rate)
        if args.video:
            from melfusion.apps.video import make_video

            make_video(numbered(args.video, i, n), image, result.audio, result.sample_rate)
        if args.spectrogram:
            from melfusion.apps.spectrogram import save_spectrogram

            save_spectrogram(numbered(args.spectrogram, i, n), result.log_mel)
        _report(args, target, result, seed if n > 1 else None)
        if plain is not None:
            # The same seed, so the same starting noise: the two differ by the picture alone.
            alone = pipe(image=None, generator=torch.Generator().manual_seed(seed), **settings)
            write_wav(numbered(plain, i, n), alone.audio, alone.sample_rate)
            _report(args, numbered(plain, i, n), alone, seed if n > 1 else None, "without the picture")
    return 0


def on_off(value: str | None) -> bool | None:
    """A flag's "on" / "off" (None: the model's default)."""
    return None if value is None else value == "on"


def _report(args, path, result, seed=None, what: str = "") -> None:
    if args.quiet:
        return
    t = result.timings
    note = ", ".join(x for x in (what, f"seed {seed}" if seed is not None else "") if x)
    windows = f", {len(result.windows)} windows" if result.windows else ""
    if result.keys:
        note = ", ".join(x for x in (note, f"key of {result.keys[0]}") if x)
    print(f"wrote {path} ({len(result.audio) / result.sample_rate:.1f} s at {result.sample_rate} Hz"
          f"{'; ' + note if note else ''}{windows}; inversion {t['inversion']:.1f} s, "
          f"denoising {t['denoising']:.1f} s, vocoding {t['vocoding']:.1f} s)", file=sys.stderr)


def cmd_info(args) -> int:
    quiet_libraries()
    if args.model:
        pipe = load_model(args.model)
        name = args.model
    else:
        from melfusion import presets

        pipe = presets.build(args.preset)
        name = f"preset {args.preset}"
    counts = pipe.parameter_counts()
    print(f"{name}: parameters per part")
    for part, n in counts.items():
        print(f"  {part:<18} {n:>15,}  ({n / 1e6:8.2f} M)")
    print(f"  {'total':<18} {sum(counts.values()):>15,}  ({sum(counts.values()) / 1e6:8.2f} M)")
    syn = pipe.music.synapse
    print(f"visual synapse: {len(syn.config.layers)} decoder cross-attention layers, alpha {syn.config.alpha}")
    trained = args.model and not any(p.is_meta for p in syn.parameters())
    for name, alpha, (k, v) in zip(syn.config.layers, syn.alphas(), syn.projection_norms()) if trained else ():
        print(f"  {name.split('.transformer_blocks')[0]:<26} alpha {alpha:.3f}  |W_k image| {k:7.3f}  |W_v image| {v:7.3f}")
    d = pipe.defaults
    image = f", image guidance {d['image_guidance_scale']}" if d.get("image_guidance_scale") is not None else ""
    print(f"defaults: {d['num_inference_steps']} steps, guidance {d['guidance_scale']}{image}, {d['duration_s']} s")
    return 0


def cmd_train(args) -> int:
    from melfusion.training.config import load_config

    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise MelFusionError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    cfg = load_config(args.config, overrides)
    quiet_libraries()
    if args.export_checkpoint:
        from melfusion.training.trainer import export_checkpoint

        out, step = export_checkpoint(cfg, args.export_checkpoint, progress=not args.quiet)
        print(f"exported step {step} of {cfg.out_dir}: model saved in {out}", file=sys.stderr)
        return 0
    from melfusion.training.trainer import train

    final = train(cfg, resume=args.resume, progress=not args.quiet)
    print(f"trained {cfg.stage}: model saved in {final}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="melfusion", description="Music for an image and a line of text.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="compose music for an image and a caption")
    g.add_argument("--image", required=True, help="image file (PNG, JPEG, ...)")
    g.add_argument("--text", required=True, help="the caption")
    g.add_argument("--out", required=True, help="output .wav path")
    g.add_argument("--model", default=None, help="model directory or preset name (default: the shipped model)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    g.add_argument("--image-guidance", type=float, default=None,
                   help="a separate guidance scale for the image (one more model pass per step; default: the model's)")
    g.add_argument("--guided-steps", type=int, default=None, metavar="N",
                   help="guidance on the first N steps only, the later ones one pass each (faster; default: the "
                        "model's, else every step)")
    g.add_argument("--duration", type=float, default=None,
                   help="seconds of audio, up to 120; past the model's window (its trained length, 10 s) the piece "
                        "is composed window by window, each continuing the last (default: the model's)")
    g.add_argument("--without-image", default=None, metavar="PATH.wav",
                   help="also write the same seed's music with the picture absent (the null image): what the "
                        "picture contributes is the difference; needs a model with the null image")
    g.add_argument("--variations", type=int, default=1, metavar="N",
                   help=f"write N pieces from seeds SEED, SEED+1, ... (1 to {MAX_VARIATIONS}); with N > 1 every "
                        "output is numbered: OUT-1.wav ... OUT-N.wav (and so --without-image, --video, --spectrogram)")
    g.add_argument("--loudness", default=None, metavar="LUFS",
                   help="integrated loudness to master every piece to, with a 50 ms fade at the end and peaks held "
                        "under -1 dBFS (default -14 LUFS; off: the model's output as it comes)")
    g.add_argument("--solver", default=None, choices=("ddim", "dpm++2m", "unipc"),
                   help="the sampler (default: the model's)")
    g.add_argument("--precision", default=None, choices=("fp32", "bf16", "auto"),
                   help="UNet arithmetic: auto is bf16 where this CPU does bfloat16 natively (default: the model's)")
    g.add_argument("--key", default=None, metavar="TONIC",
                   help="for a model with key conditioning: the tonic to compose in (C, C#, D, Eb, ... B; 'none' "
                        "leaves it to the model); the picture sets major or minor (default: drawn from the seed)")
    g.add_argument("--key-guidance", default=None, choices=("on", "off"),
                   help="for a model with key conditioning: guide towards the tonic too (the unconditional pass "
                        "drops the key; no extra pass; default: the model's)")
    g.add_argument("--distilled", default=None, choices=("on", "off"),
                   help="for a model with a guidance-distilled network: one pass a step in place of the guided "
                        "passes (default: wherever the guidance is the one it was distilled for)")
    g.add_argument("--teacher-steps", type=int, default=None, metavar="N",
                   help="where the distilled network runs: the first N steps through the network it was distilled "
                        "from (its guided passes), the rest through it (default: the model's)")
    g.add_argument("--video", default=None, metavar="PATH.mp4", help="also write the image with the music as a video")
    g.add_argument("--spectrogram", default=None, metavar="PATH.png", help="also write a picture of the mel spectrogram")
    g.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("info", help="parameter counts of a preset or a model")
    src = i.add_mutually_exclusive_group()
    src.add_argument("--preset", default="small", help="tiny, small or paper (default: small)")
    src.add_argument("--model", default=None, help="a saved model directory")
    i.set_defaults(func=cmd_info)

    tr = sub.add_parser("train", help="train one stage from a config file (runs under accelerate launch too)")
    tr.add_argument("--config", required=True, help="a TOML or JSON training config")
    tr.add_argument("--resume", action="store_true", help="continue from the last checkpoint in out_dir")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    tr.add_argument("--export-checkpoint", metavar="DIR", default=None,
                    help="save the model of the last checkpoint to DIR, without training")
    tr.add_argument("--quiet", action="store_true")
    tr.set_defaults(func=cmd_train, on_interrupt="checkpoints are kept; rerun with --resume to continue")

    from melfusion.apps.cli import add_app_commands
    from melfusion.data.cli import add_data_commands
    from melfusion.metrics.cli import add_eval_commands

    add_data_commands(sub)
    add_eval_commands(sub)
    add_app_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Nothing is ever fetched from a model hub; set before transformers is first imported.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    return run_command(args)


def run_command(args) -> int:
    """Run a parsed command; every failure becomes one `error:` line and a non-zero status."""
    try:
        return int(args.func(args) or 0)
    except MelFusionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # training's graceful stop says where its checkpoint is
        hint = str(exc) or getattr(args, "on_interrupt", None)
        print("error: interrupted" + (f" ({hint})" if hint else ""), file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk, a folder we may not write to, ...
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except MemoryError:
        print("error: out of memory (try a shorter --duration or fewer --steps)", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, with a way to see the traceback
        if os.environ.get("MELFUSION_DEBUG"):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"error: internal error ({type(exc).__name__}: {first}); set MELFUSION_DEBUG=1 for details",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
