"""SynthMeL: <image, text, music> triplets in MeLBench's style with known ground truth.

Record `i` of a set made with seed `s` is a pure function of (s, i): its genre, split, mode
and energy come from balanced permutations over blocks of records, everything else from a
numpy Generator seeded with (s, i, purpose). Records can therefore be made in any order, in
parallel, and an interrupted run resumes by making only the records whose files are missing.

Layout of DIR:
    manifest.jsonl       one record per line (written last, atomically)
    synthmel.json        the settings the set was made with (a rerun must match them)
    images/<id>.png      256x256 RGB
    audio/<id>.wav       16 kHz mono 16-bit
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from melfusion.atomic import atomic_file
from melfusion.audio.io import write_wav
from melfusion.data import captions, images, music, render
from melfusion.data.genres import GENRES, IMAGE_KIND_WEIGHTS, IMAGE_KINDS
from melfusion.data.manifest import write_manifest
from melfusion.errors import MelFusionError

FORMAT_VERSION = 1
SPLIT_BLOCK = ("train", "train", "train", "val", "test")
COMBOS = (("major", "calm"), ("major", "driving"), ("minor", "calm"), ("minor", "driving"))


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    duration_s: float = 10.0
    sample_rate: int = 16000
    soundfont: str = render.DEFAULT_SOUNDFONT
    version: int = FORMAT_VERSION

    def identity(self) -> dict:
        """What must match for a rerun to resume into the same folder (the sound font by name)."""
        d = asdict(self)
        d["soundfont"] = Path(self.soundfont).name
        return d


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def record_id(index: int) -> str:
    return f"synthmel-{index:06d}"


def plan(seed: int, index: int) -> dict:
    """The record's balanced labels: genre, split, mode, energy (cheap; no audio or image)."""
    n_genres = len(GENRES)
    block, pos = divmod(index, n_genres)
    g = int(_rng(seed, 1, block).permutation(n_genres)[pos])
    k = block  # this is the genre's k-th record
    split = SPLIT_BLOCK[int(_rng(seed, 2, g, k // 5).permutation(5)[k % 5])]
    mode, energy = COMBOS[int(_rng(seed, 3, g, k // 4).permutation(4)[k % 4])]
    return {"genre": GENRES[g], "split": split, "mode": mode, "energy": energy}


def compose_record(cfg: SynthConfig, index: int) -> tuple[dict, music.Piece, np.random.Generator]:
    """The manifest record and the notes of record `index`; the returned Generator draws the image."""
    p = plan(cfg.seed, index)
    g = p["genre"]
    rng = _rng(cfg.seed, 4, index)
    subgenre = g.subgenres[int(rng.integers(len(g.subgenres)))]
    kind = IMAGE_KINDS[int(rng.choice(len(IMAGE_KINDS), p=IMAGE_KIND_WEIGHTS))]
    scene = g.scenes[int(rng.integers(len(g.scenes)))]
    rid = record_id(index)
    piece = music.compose(g, _rng(cfg.seed, 5, index), mode=p["mode"], energy=p["energy"], split=p["split"],
                          duration_s=cfg.duration_s, melody_tag=f"gen/{g.name}/{cfg.seed}/{index}")
    caption = captions.make_caption(_rng(cfg.seed, 6, index), genre=g.name, subgenre=subgenre, order=piece.order,
                                    lead=g.lead.name, drums=g.drums, bpm=piece.bpm)
    record = {
        "id": rid, "image": f"images/{rid}.png", "caption": caption, "audio": f"audio/{rid}.wav",
        "split": p["split"], "genre": g.name, "subgenre": subgenre, "bpm": piece.bpm, "key": piece.key,
        "mode": p["mode"], "energy": p["energy"], "instruments": piece.order, "drums": g.drums is not None,
        "image_kind": kind, "scene": scene, "melody_id": piece.melody_id,
    }
    return record, piece, _rng(cfg.seed, 7, index)


def _save_png(img, path: Path) -> None:
    with atomic_file(path) as tmp:
        img.save(tmp, format="PNG", optimize=False)


def make_record(cfg: SynthConfig, out: Path, index: int) -> tuple[dict, bool]:
    """Make record `index` in `out` unless its files are there; returns (record, made)."""
    record, piece, img_rng = compose_record(cfg, index)
    img_path, wav_path = out / record["image"], out / record["audio"]
    if img_path.is_file() and wav_path.is_file():  # audio is written last: both there means done
        return record, False
    img = images.make_image(img_rng, scene=record["scene"], mode=record["mode"], energy=record["energy"],
                            kind=record["image_kind"])
    _save_png(img, img_path)
    try:
        wave = render.render_midi(music.midi_bytes(piece), cfg.sample_rate, cfg.soundfont)
        wave = render.finish(wave, cfg.sample_rate, cfg.duration_s)
    except MelFusionError as exc:
        raise MelFusionError(f"record {record['id']}: {exc}") from None
    write_wav(wav_path, wave, cfg.sample_rate)
    return record, True


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C to the parent, which stops them: no traceback from each worker."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker(args):
    cfg, out, index = args
    return make_record(cfg, Path(out), index)


def _check_settings(cfg: SynthConfig, out: Path) -> None:
    path = out / "synthmel.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            raise MelFusionError(f"{path} is unreadable; remove it or choose another --out") from None
        if old != cfg.identity():
            diff = ", ".join(f"{k} {old.get(k)!r} (now {v!r})" for k, v in cfg.identity().items() if old.get(k) != v)
            raise MelFusionError(f"{out} holds a SynthMeL set made with other settings: {diff}; use another --out")
    elif out.is_dir() and any(out.iterdir()):
        raise MelFusionError(f"{out} is not empty and holds no SynthMeL set; choose an empty or new folder")


def synthesize(n: int, out: str | os.PathLike, cfg: SynthConfig = SynthConfig(), workers: int = 1,
               progress: bool = True) -> dict:
    """Make (or finish) an n-record set in `out`; returns {"made": k, "kept": m, "manifest": path}."""
    if n < 1:
        raise MelFusionError("--n must be at least 1")
    if cfg.duration_s <= 0 or cfg.duration_s > 60:
        raise MelFusionError("--duration must be in (0, 60] seconds")
    render.find_fluidsynth()
    render.check_soundfont(cfg.soundfont)
    out = Path(out)
    _check_settings(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("images/.tmp-*"), *out.glob("audio/.tmp-*")]:  # left by a killed run
        stale.unlink(missing_ok=True)
    (out / "synthmel.json").write_text(json.dumps(cfg.identity(), indent=1, sort_keys=True) + "\n")
    from tqdm import tqdm

    records: list[dict | None] = [None] * n
    made = 0
    bar = tqdm(total=n, desc="synthmel", unit="rec", disable=not progress, dynamic_ncols=True)
    jobs = [(cfg, str(out), i) for i in range(n)]
    try:
        if workers > 1:
            import multiprocessing as mp

            with mp.get_context("fork").Pool(workers, initializer=_ignore_sigint) as pool:
                for i, (rec, was_made) in enumerate(pool.imap(_worker, jobs, chunksize=4)):
                    records[i] = rec
                    made += was_made
                    bar.update(1)
        else:
            for i, job in enumerate(jobs):
                rec, was_made = _worker(job)
                records[i] = rec
                made += was_made
                bar.update(1)
    finally:
        bar.close()
    manifest = write_manifest(out / "manifest.jsonl", records)
    return {"made": made, "kept": n - made, "manifest": str(manifest)}
