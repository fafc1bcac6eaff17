"""`melfusion study create`: a study folder from a manifest and several generated sets.

A generated set is a folder with `<id>.wav` for records of the manifest (what
`melfusion generate-set` writes). The study folder holds everything the server will ever serve:

    STUDY/study.json     title, tasks, system names, the admin token's hash
    STUDY/study.sqlite   items, raters, ratings (WAL mode)
    STUDY/media/         copies of the images (PNG) and the music (WAV) under opaque names
    STUDY/admin-token    the admin token (mode 0600)
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import shutil
import tempfile
from pathlib import Path

import soundfile as sf

from melfusion.apps.study import store
from melfusion.errors import MelFusionError
from melfusion.images import load_image

MAX_IMAGE_SIDE = 768


def read_records(manifest: str | os.PathLike, split: str | None = None) -> list[dict]:
    manifest = Path(manifest)
    if not manifest.is_file():
        raise MelFusionError(f"manifest not found: {manifest}")
    records = []
    for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MelFusionError(f"{manifest}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) and rec.get(k) for k in ("id", "image", "caption")):
            raise MelFusionError(f"{manifest}:{n}: a record needs id, image and caption")
        if split is not None and rec.get("split") != split:
            continue
        rec = dict(rec, image_path=(manifest.parent / rec["image"]))
        records.append(rec)
    return records


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether `path`, symlinks resolved, lies under `root` (also resolved)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def _check_confined(usable: list[dict], folders: dict[str, Path], root) -> None:
    """Refuse a study that would read a file outside `root`: the browser's create page promises that
    only what lies under the sets root is ever read, and a manifest's `image` or `id` (`../..`) or a
    symlinked clip could otherwise point anywhere."""
    for rec in usable:
        if not inside(rec["image_path"], root):
            raise MelFusionError(f"record {rec['id']!r}: its image is outside the sets root")
        for name, folder in folders.items():
            if not inside(folder / f"{rec['id']}.wav", root):
                raise MelFusionError(f"record {rec['id']!r}: the clip of system {name!r} is outside the sets root")


def create_study(manifest, systems: dict[str, str], out, tasks=("ovl_rel", "text", "imsm"), split=None,
                 limit=None, seed=0, title="A listening study", confine_to=None) -> dict:
    """Build the study folder `out`, all or nothing: it is assembled in a hidden folder beside `out`
    and renamed into place at the end, so a failure leaves no half-built study. With `confine_to`,
    every image and clip read must lie under that folder (the web create page's sets root)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MelFusionError(f"--out already exists and is not empty: {out}")
    if not systems:
        raise MelFusionError("name at least one system (--system NAME=DIR)")
    tasks = list(dict.fromkeys(tasks))
    for t in tasks:
        if t not in store.TASKS:
            raise MelFusionError(f"unknown task {t!r} (choose from {', '.join(store.TASKS)})")
    if not tasks:
        raise MelFusionError("choose at least one task")
    folders = {}
    for name, folder in systems.items():
        folder = Path(folder)
        if not folder.is_dir():
            raise MelFusionError(f"generated set of system {name!r} not found: {folder}")
        folders[name] = folder
    records = read_records(manifest, split)
    # Side by side means every system answers the same records: keep those all systems have.
    usable = [r for r in records if all((f / f"{r['id']}.wav").is_file() for f in folders.values())]
    if not usable:
        raise MelFusionError(f"no record of {manifest} has a <id>.wav in every system's folder")
    if limit is not None:
        if limit < 1:
            raise MelFusionError("--limit must be at least 1")
        if limit < len(usable):
            usable = sorted(random.Random(seed).sample(usable, limit), key=lambda r: r["id"])
    if confine_to is not None:
        _check_confined(usable, folders, confine_to)

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        media = work / "media"
        media.mkdir()
        con = store.connect(work, create=True)
        per_task = {t: 0 for t in tasks}
        con.execute("BEGIN")
        for rec in usable:
            img_name = f"{secrets.token_hex(8)}.png"
            img = load_image(rec["image_path"])
            img.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
            img.save(media / img_name, format="PNG")
            for system, folder in folders.items():
                src = folder / f"{rec['id']}.wav"
                try:
                    info = sf.info(str(src))
                except Exception:
                    raise MelFusionError(f"not a readable WAV file: {src}") from None
                if info.frames == 0:
                    raise MelFusionError(f"empty audio file: {src}")
                audio_name = f"{secrets.token_hex(8)}.wav"
                shutil.copyfile(src, media / audio_name)
                for task in tasks:
                    con.execute("INSERT INTO items (id, task, system, record_id, caption, image, audio) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (secrets.token_hex(8), task, system, rec["id"],
                                 rec["caption"] if task in ("ovl_rel", "text") else None,
                                 img_name if task in ("ovl_rel", "imsm") else None, audio_name))
                    per_task[task] += 1
        con.execute("COMMIT")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        token = secrets.token_urlsafe(24)
        token_file = work / "admin-token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        meta = {"title": title, "tasks": tasks, "systems": sorted(folders), "records": len(usable),
                "created_at": store.now(), "admin_token_sha256": token_hash(token)}
        (work / "study.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return {"items": sum(per_task.values()), "per_task": per_task, "records": len(usable), "token": token,
            "token_file": out / "admin-token"}


def load_meta(study_dir: str | os.PathLike) -> dict:
    path = Path(study_dir) / "study.json"
    if not path.is_file():
        raise MelFusionError(f"not a study folder (no study.json): {study_dir}")
    return json.loads(path.read_text())
