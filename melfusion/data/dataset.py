"""A torch Dataset over any manifest: image tensor, caption and log-mel per record.

Bad records never crash an epoch halfway: with `on_error="skip"` a record that fails to load
is counted (`skipped`, `bad`) and the next good one is served instead; with
`on_error="fail"` every record is validated when the Dataset is built, and a MelFusionError
naming the first bad ones (line number and id) is raised before training starts.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from melfusion.atomic import atomic_file
from melfusion.audio.io import read_audio
from melfusion.audio.mel import MelConfig, MelSpectrogram, fit_frames
from melfusion.data.manifest import Entry, audio_facts, audio_problems, image_problem, read_manifest
from melfusion.errors import MelFusionError


class ManifestDataset(torch.utils.data.Dataset):
    """`item = {"id", "caption", "image": (3, size, size) float in [0, 1], "mel": (frames, n_mels)}`.

    `frames` crops or pads the log-mel in time (1024 for AudioLDM's 10.24 s; None keeps the
    clip's own length). `cache_dir` keeps computed mels on disk, keyed by the audio file's
    path, size, modification time and the mel settings.
    """

    def __init__(self, manifest: str | os.PathLike, *, split: str | None = None, image_size: int = 256,
                 mel_config: MelConfig = MelConfig(), frames: int | None = 1024,
                 cache_dir: str | os.PathLike | None = None, on_error: str = "skip"):
        if on_error not in ("skip", "fail"):
            raise MelFusionError(f"on_error must be 'skip' or 'fail', not {on_error!r}")
        entries, problems = read_manifest(manifest)
        self.manifest = Path(manifest)
        self.entries: list[Entry] = [e for e in entries if split is None or e.record["split"] == split]
        self.image_size, self.mel_config, self.frames, self.on_error = image_size, mel_config, frames, on_error
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.mel = MelSpectrogram(mel_config)
        self.bad: dict[str, str] = {}            # id -> why, for records skipped so far
        self.broken_lines = [str(p) for p in problems]
        if on_error == "fail":
            errors = self.broken_lines + self.validate()
            if errors:
                more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
                raise MelFusionError(f"{self.manifest}: {len(errors)} bad records: " + "; ".join(errors[:3]) + more)
        if not self.entries:
            raise MelFusionError(f"{self.manifest}: no records" + (f" in split {split!r}" if split else ""))

    @property
    def skipped(self) -> int:
        return len(self.bad)

    def __len__(self) -> int:
        return len(self.entries)

    def validate(self) -> list[str]:
        """Every record's problems (files, sample rate, channels), as 'line N (id X): why'."""
        out = []
        for e in self.entries:
            msg = image_problem(e.image_path)
            if msg:
                out.append(f"{e.where()}: {msg}")
            try:
                probs = audio_problems(audio_facts(e.audio_path, read_samples=False), self.mel_config.sample_rate)
            except MelFusionError as exc:
                probs = [str(exc)]
            out += [f"{e.where()}: {p}" for p in probs]
        return out

    # ------------------------------------------------------------ loading one record

    def _image(self, e: Entry) -> torch.Tensor:
        msg = image_problem(e.image_path)
        if msg:
            raise MelFusionError(msg)
        with Image.open(e.image_path) as im:
            im = im.convert("RGB")
            if im.size != (self.image_size, self.image_size):
                # centre crop to a square, then resize: the image's proportions are kept
                w, h = im.size
                s = min(w, h)
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                im = im.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
            arr = np.asarray(im, dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    def _cache_path(self, e: Entry) -> Path | None:
        if self.cache_dir is None:
            return None
        st = e.audio_path.stat()
        key = f"{e.audio_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{sorted(self.mel_config.to_dict().items())}"
        return self.cache_dir / (hashlib.sha1(key.encode()).hexdigest() + ".npy")

    def _mel(self, e: Entry) -> torch.Tensor:
        facts = audio_facts(e.audio_path, read_samples=False)
        probs = audio_problems(facts, self.mel_config.sample_rate)
        if probs:
            raise MelFusionError("; ".join(probs))
        cache = self._cache_path(e)
        if cache is not None and cache.is_file():
            mel = torch.from_numpy(np.load(cache))
        else:
            wave = torch.from_numpy(read_audio(e.audio_path, self.mel_config.sample_rate))
            with torch.no_grad():
                mel = self.mel(wave[None])[0]
            if cache is not None:
                with atomic_file(cache) as tmp, open(tmp, "wb") as f:
                    np.save(f, mel.numpy())
        if self.frames is not None:
            mel = fit_frames(mel[None], self.frames)[0]
        return mel

    def load(self, index: int) -> dict:
        """Record `index` or MelFusionError (no skipping)."""
        e = self.entries[index]
        try:
            return {"id": e.id, "caption": e.record["caption"], "image": self._image(e), "mel": self._mel(e)}
        except MelFusionError as exc:
            raise MelFusionError(f"{self.manifest} {e.where()}: {exc}") from None

    def __getitem__(self, index: int) -> dict:
        n = len(self.entries)
        for k in range(n):
            i = (index + k) % n
            e = self.entries[i]
            if e.id in self.bad:
                continue
            try:
                return self.load(i)
            except MelFusionError as exc:
                if self.on_error == "fail":
                    raise
                self.bad[e.id] = str(exc)
        raise MelFusionError(f"{self.manifest}: every record failed to load (first: {next(iter(self.bad.values()))})")
