"""What the web create page may build a study from: the generated sets and manifests found under
the sets root (`melfusion study serve DIR --sets-root ROOT`), and the build from a form's choices.

The security rule: a request only ever *names* a choice; the name is looked up in a dict this
module builds by walking ROOT afresh, and the path used is the one found there. A request string
is never joined onto a path, so `../x`, an absolute path, or a name the walk did not produce is
simply unknown. The walk skips hidden entries, study folders, and any symlink whose target lies
outside ROOT; the build then refuses any image or clip outside ROOT (`create_study(confine_to=)`).
The one name that does become a path, the new study's folder, must be a plain slug.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from melfusion.apps.study import store
from melfusion.apps.study.build import create_study, inside
from melfusion.errors import MelFusionError

SLUG_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SYSTEM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_DEPTH = 4          # ROOT/a/b/c/d: deep enough for gen/<model>/<system>, shallow enough to stay quick
MAX_ENTRIES = 100_000  # stop walking a huge tree (a whole dataset under ROOT) rather than hang a request


class Refused(MelFusionError):
    """A create request the server will not carry out; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Sources:
    """The server's own enumeration of ROOT: name relative to ROOT -> resolved path."""

    root: Path
    sets: dict[str, Path] = field(default_factory=dict)
    clips: dict[str, int] = field(default_factory=dict)
    manifests: dict[str, Path] = field(default_factory=dict)
    truncated: bool = False


def scan(root: str | os.PathLike) -> Sources:
    """Walk ROOT (symlinks followed only while they stay inside it) for folders holding `*.wav`
    clips and for `*.jsonl` manifests. Study folders (with a study.json) are not sets: their media
    are copies under opaque names, and hidden folders are where builds are assembled."""
    root = Path(os.path.realpath(root))
    found = Sources(root)
    stack, seen, n_entries = [(root, Path("."), 0)], {root}, 0
    while stack:
        folder, rel, depth = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        if depth > 0 and any(e.name == "study.json" for e in entries):
            continue
        clips = 0
        for e in entries:
            n_entries += 1
            if n_entries > MAX_ENTRIES:
                found.truncated = True
                break
            # `folder` is resolved and inside ROOT, so only a symlink can lead out of it.
            if e.name.startswith(".") or (e.is_symlink() and not inside(e.path, root)):
                continue
            try:
                is_dir, is_file = e.is_dir(), e.is_file()
            except OSError:
                continue
            if is_dir:
                real = Path(os.path.realpath(e.path))
                if depth < MAX_DEPTH and real not in seen:
                    seen.add(real)
                    stack.append((real, rel / e.name, depth + 1))
            elif is_file and e.name.endswith(".wav"):
                clips += 1
            elif is_file and e.name.endswith(".jsonl"):
                found.manifests[(rel / e.name).as_posix()] = Path(os.path.realpath(e.path))
        if clips and depth > 0:
            found.sets[rel.as_posix()] = folder
            found.clips[rel.as_posix()] = clips
        if found.truncated:
            break
    found.sets = dict(sorted(found.sets.items()))
    found.manifests = dict(sorted(found.manifests.items()))
    return found


def check_slug(name: str) -> str:
    if not SLUG_RE.fullmatch(name or ""):
        raise Refused("the study name must be 1-64 letters, digits, '-' or '_' (it becomes a folder name)")
    return name


def check_system(name: str, set_name: str) -> str:
    if not SYSTEM_RE.fullmatch(name or ""):
        raise Refused(f"the system name for set {set_name!r} must be 1-64 letters, digits, '.', '-' or '_', "
                      "starting with a letter or digit")
    return name


def build_from_root(root, studies_root, name: str, chosen: dict[str, str], manifest: str, tasks: list[str],
                    split: str | None = None, limit: int | None = None, title: str = "A listening study") -> dict:
    """Build studies_root/name from the sets `chosen` (set name -> system name) and `manifest`, all
    given as names from `scan(root)`; anything else is refused before a file is touched."""
    name = check_slug(name)
    if not chosen:
        raise Refused("choose at least one generated set")
    found = scan(root)
    systems: dict[str, str] = {}
    for set_name, system in chosen.items():
        if set_name not in found.sets:
            raise Refused(f"unknown generated set {set_name!r}: choose one from the list")
        system = check_system(system, set_name)
        if system in systems:
            raise Refused(f"two sets have the system name {system!r}")
        systems[system] = str(found.sets[set_name])
    if manifest not in found.manifests:
        raise Refused(f"unknown manifest {manifest!r}: choose one from the list")
    if not tasks or any(t not in store.TASKS for t in tasks):
        raise Refused(f"choose tasks from {', '.join(store.TASKS)}")
    out = Path(studies_root) / name
    if out.exists() or out.is_symlink():
        raise Refused(f"a study named {name!r} already exists", status=409)
    res = create_study(found.manifests[manifest], systems, out, tasks=tasks, split=split, limit=limit,
                       title=title, confine_to=found.root)
    return dict(res, out=out, systems=sorted(systems))
