"""`melfusion generate-set` and `melfusion evaluate`: make a model's clips for a split, then score them.

    melfusion generate-set --manifest M --split test --model DIR --out gen/ [--limit N] [--steps N] [--seed S]
    melfusion evaluate --generated gen/ --reference M --split test --out report.json

`add_eval_commands(subparsers)` registers both on the main command line.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from melfusion.errors import MelFusionError


def record_seed(record_id: str, seed: int) -> int:
    """The generator seed of one record: a hash of (seed, id), so a clip never depends on which others ran."""
    digest = hashlib.sha256(f"{int(seed)}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def shuffled_images(ids: list[str], seed: int) -> dict[str, str]:
    """The appendix E.5 control: each record borrows another record's image (never its own).

    One random cycle through the whole split, so the pairing does not depend on --limit.
    """
    import numpy as np

    order = np.random.default_rng(np.random.SeedSequence([int(seed), 5]).generate_state(1)[0]).permutation(len(ids))
    return {ids[order[k]]: ids[order[(k + 1) % len(ids)]] for k in range(len(ids))}


def _parse_shard(text: str | None) -> tuple[int, int]:
    """`K/N` -> (K, N): this process makes every N-th record starting at the K-th (0-based)."""
    if text is None:
        return 0, 1
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise MelFusionError(f"--shard must look like K/N (for example 0/2), got {text!r}") from None
    if n < 1 or not 0 <= k < n:
        raise MelFusionError(f"--shard K/N needs 0 <= K < N, got {text!r}")
    return k, n


SETTINGS_FILE = "generate-set.json"
KEYS_FILE = "keys.json"  # each clip's tonic, for a model with key conditioning


def _check_settings(out: Path, settings: dict) -> None:
    """A folder holds clips made one way: its settings are written with the first clip, and a rerun that
    would make its missing clips another way (other model, steps, guidance, seed, ...) is refused."""
    from melfusion.atomic import atomic_file

    path = out / SETTINGS_FILE
    if path.is_file():
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise MelFusionError(f"{path} is unreadable ({exc}); delete it only if every clip was made "
                                 f"with this command's settings") from None
        # Compared on the keys the folder's file has: one written before a setting was recorded
        # (such as "weights") is checked on the rest.
        changed = [k for k in sorted(before) if before[k] != settings.get(k)]
        if changed:
            k = changed[0]
            raise MelFusionError(f"{out} was made with {k}={before.get(k)!r}, this run has {settings.get(k)!r} "
                                 f"({', '.join(changed)} differ); use another --out folder")
        return
    if any(out.glob("*.wav")):  # clips from before settings were recorded: nothing to check them against
        print(f"note: {out} has clips but no {SETTINGS_FILE}; their settings cannot be checked", file=sys.stderr)
        return
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(settings, indent=2) + "\n")


def weights_digest(model: str | None) -> str | None:
    """The saved weights' SHA-256 (their paths and bytes), so that a model retrained or re-exported in
    place is not taken for the one that made a folder's clips; None for a preset's random weights."""
    import hashlib

    from melfusion.loading import DEFAULT_MODEL_DIR

    root = DEFAULT_MODEL_DIR if model is None else Path(model)
    if not root.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.safetensors")):
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:20]


def _generate_set(args) -> int:
    import torch
    from tqdm import tqdm

    from melfusion.atomic import atomic_file
    from melfusion.audio.io import write_wav
    from melfusion.loading import load_model, quiet_libraries
    from melfusion.music.keys import key_name, record_tonic
    from melfusion.images import load_image
    from melfusion.metrics.evaluate import load_reference
    from melfusion.pipeline import check_duration, check_guided_steps, check_prompt, check_teacher_steps

    if args.seed < 0:
        raise MelFusionError("--seed must be a non-negative integer")
    if args.limit is not None and args.limit < 1:
        raise MelFusionError("--limit must be at least 1")
    if args.batch_size < 1:
        raise MelFusionError("--batch-size must be at least 1")
    if args.duration is not None:
        check_duration(args.duration)
    shard, shards = _parse_shard(args.shard)
    split = load_reference(args.manifest, args.split)
    entries = split[:args.limit][shard::shards]
    image_of = {e.id: e for e in split}
    if args.shuffle_images is not None:
        if len(split) < 2:
            raise MelFusionError("--shuffle-images needs at least two records in the split")
        borrowed = shuffled_images([e.id for e in split], args.shuffle_images)
        image_of = {rid: image_of[other] for rid, other in borrowed.items()}
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise MelFusionError(f"--out must be a folder: {out}")
    # What decides a clip (not --limit, --shard or --batch-size: a clip does not depend on them).
    model = args.model if args.model is None or not Path(args.model).exists() else str(Path(args.model).resolve())
    settings = {"manifest": str(Path(args.manifest).resolve()), "split": args.split, "model": model,
                "steps": args.steps, "guidance": args.guidance, "image_guidance": args.image_guidance,
                "duration": args.duration, "seed": args.seed, "shuffle_images": args.shuffle_images,
                "weights": weights_digest(args.model)}
    # Settings added later count only when given, so folders made before them still resume.
    settings.update({k: v for k, v in (("solver", args.solver), ("precision", args.precision),
                                       ("vocoder_iters", args.vocoder_iters), ("guided_steps", args.guided_steps),
                                       ("keys", None if args.keys == "seed" else args.keys),
                                       ("key_guidance", args.key_guidance),
                                       ("distilled", args.distilled), ("teacher_steps", args.teacher_steps))
                     if v is not None})
    check_guided_steps(args.guided_steps)
    check_teacher_steps(args.teacher_steps)
    if args.vocoder_iters is not None and args.vocoder_iters < 1:
        raise MelFusionError("--vocoder-iters must be at least 1")
    _check_settings(out, settings)
    todo = [e for e in entries if not (out / f"{e.id}.wav").is_file()]
    if not todo:
        print(f"{out}: all {len(entries)} clips already there", file=sys.stderr)
        return 0
    from melfusion.cli import on_off

    quiet_libraries()
    clock = time.perf_counter()
    pipe = load_model(args.model, seed=args.seed)
    if args.vocoder_iters is not None:
        if not hasattr(pipe.vocoder, "n_iter"):
            raise MelFusionError("--vocoder-iters is for Griffin-Lim vocoders; this model's vocoder has no iterations")
        pipe.vocoder.n_iter = args.vocoder_iters
    if args.keys == "record" and not pipe.music.takes_key:
        raise MelFusionError("--keys record is for a model with key conditioning; this one takes no key")
    keys_file = out / KEYS_FILE
    keys_used = json.loads(keys_file.read_text()) if keys_file.is_file() else {}
    bar = tqdm(total=len(todo), desc="generate-set", unit="clip", disable=args.quiet, file=sys.stderr)
    for start in range(0, len(todo), args.batch_size):
        batch = todo[start:start + args.batch_size]
        # One generator per record, seeded by its id: a clip is the same in any batch and any run.
        generators = [torch.Generator().manual_seed(record_seed(e.id, args.seed)) for e in batch]
        result = pipe(image=[load_image(image_of[e.id].image_path) for e in batch],
                      prompt=[check_prompt(e.record["caption"]) for e in batch],
                      duration_s=args.duration, num_inference_steps=args.steps, guidance_scale=args.guidance,
                      image_guidance_scale=args.image_guidance, generator=generators, progress=False,
                      solver=args.solver, precision=args.precision, guided_steps=args.guided_steps,
                      key=[key_name(record_tonic(e.record, with_mode=pipe.music.takes_mode)) for e in batch]
                      if args.keys == "record" else None,
                      key_guidance=on_off(args.key_guidance), distilled=on_off(args.distilled),
                      teacher_steps=args.teacher_steps)
        for e, audio in zip(batch, result.audio):
            write_wav(out / f"{e.id}.wav", audio, result.sample_rate)  # atomic: a crash leaves no partial file
        if result.keys:
            keys_used.update({e.id: k for e, k in zip(batch, result.keys)})
            with atomic_file(keys_file) as tmp:
                tmp.write_text(json.dumps(keys_used, indent=1, sort_keys=True) + "\n")
        bar.update(len(batch))
    bar.close()
    took = time.perf_counter() - clock
    print(f"{out}: {len(todo)} made, {len(entries) - len(todo)} already there, in {took:.0f} s "
          f"({took / len(todo):.2f} s a clip, loading included)", file=sys.stderr)
    return 0


def _evaluate(args) -> int:
    from melfusion.loading import quiet_libraries
    from melfusion.metrics.evaluate import evaluate_dir, markdown_table

    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise MelFusionError(f"--out must name a .json file, got {out}")
    quiet_libraries()
    result = evaluate_dir(args.generated, args.reference, args.split, args.embedder, args.judges, args.subset)
    name = args.name or Path(args.generated).resolve().name
    table = markdown_table({name: result})
    result["table"] = table
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    return 0


def add_eval_commands(sub) -> None:
    g = sub.add_parser("generate-set", help="generate a clip for every record of a manifest split (resumable)")
    g.add_argument("--manifest", required=True)
    g.add_argument("--split", default="test")
    g.add_argument("--model", default=None, help="model directory or preset name (default: the shipped model)")
    g.add_argument("--out", required=True, help="output folder; clips are named <id>.wav")
    g.add_argument("--limit", type=int, default=None, help="only the first N records of the split")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    g.add_argument("--image-guidance", type=float, default=None, help="a separate guidance scale for the image")
    g.add_argument("--duration", type=float, default=None, help="seconds of audio (default: the model's)")
    g.add_argument("--seed", type=int, default=0, help="each record's seed is a hash of this and its id")
    g.add_argument("--solver", default=None, choices=("ddim", "dpm++2m", "unipc"), help="the sampler (default: the model's)")
    g.add_argument("--guided-steps", type=int, default=None, metavar="N",
                   help="guidance on the first N steps only (default: the model's, else every step)")
    g.add_argument("--precision", default=None, choices=("fp32", "bf16", "auto"),
                   help="UNet arithmetic (default: the model's)")
    g.add_argument("--vocoder-iters", type=int, default=None, help="Griffin-Lim phase iterations (default: the model's)")
    g.add_argument("--batch-size", type=int, default=1,
                   help="clips composed together (a clip does not depend on its batch; no faster on 2 CPU cores)")
    g.add_argument("--shuffle-images", type=int, default=None, metavar="SEED",
                   help="the control of appendix E.5: give each record another record's image")
    g.add_argument("--keys", default="seed", choices=("seed", "record"),
                   help="for a model with key conditioning: each clip's tonic drawn from its seed (the default, as a "
                        "user gets it) or the record's own; the keys used go to OUT/keys.json")
    g.add_argument("--key-guidance", default=None, choices=("on", "off"),
                   help="for a model with key conditioning: the unconditional pass drops the key (default: the model's)")
    g.add_argument("--distilled", default=None, choices=("on", "off"),
                   help="for a model with a guidance-distilled network: use it (default: where it applies)")
    g.add_argument("--teacher-steps", type=int, default=None, metavar="N",
                   help="with the distilled network: its teacher's guided passes on the first N steps (default: the "
                        "model's)")
    g.add_argument("--shard", default=None, metavar="K/N",
                   help="make only every N-th record from the K-th (run N processes, K = 0..N-1, on one folder)")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=_generate_set, on_interrupt="finished clips are kept; rerun the same command to resume")

    e = sub.add_parser("evaluate", help="FAD, FD, KL, IMSM and judge accuracy of generated clips")
    e.add_argument("--generated", required=True, help="folder of <id>.wav clips")
    e.add_argument("--reference", required=True, help="the manifest the clips were generated from")
    e.add_argument("--split", default="test")
    e.add_argument("--embedder", default="synthmel",
                   help="synthmel[:DIR] (default), vggish:PATH, panns:PATH or clap:PATH for FAD/FD")
    e.add_argument("--judges", default=None, help="SynthMeL judges folder (default: the shipped one)")
    e.add_argument("--subset", action="store_true", help="score only the records that have a clip")
    e.add_argument("--name", default=None, help="row name in the table (default: the folder's name)")
    e.add_argument("--out", required=True, help="report .json (a .md table is written beside it)")
    e.set_defaults(func=_evaluate)
