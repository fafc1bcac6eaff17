"""A small manifest of synthetic triplets for training tests: tones and coloured images."""
import json
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image


def make_manifest(root: Path, n: int = 12, seconds: float = 1.0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        minor = i % 2 == 1
        t = np.arange(int(16000 * seconds)) / 16000
        f0 = 220 * (1.2 if minor else 1.26)
        wave = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * f0 * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(str(root / f"a{i}.wav"), wave.astype(np.float32), 16000, subtype="PCM_16")
        colour = (40, 50, 140) if minor else (240, 180, 60)
        Image.new("RGB", (64, 64), colour).save(root / f"i{i}.png")
        split = "train" if i < n - 4 else ("val" if i < n - 2 else "test")
        lines.append(json.dumps({"id": f"r{i}", "image": f"i{i}.png", "audio": f"a{i}.wav", "split": split,
                                 "caption": f"a piece for strings number {i}", "scene": "fields",
                                 "image_kind": "poster", "mode": "minor" if minor else "major"}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root / "manifest.jsonl"


def write_config(path: Path, **values) -> Path:
    def toml(v):
        if isinstance(v, dict):  # an inline table
            return "{" + ", ".join(f"{k} = {json.dumps(x)}" for k, x in v.items()) + "}"
        return json.dumps(v)

    body = "\n".join(f"{k} = {toml(v)}" for k, v in values.items())
    path.write_text(body + "\n")
    return path


def music_config(tmp_path: Path, manifest: Path, name: str, **over):
    """A tiny music-stage run over `make_manifest`'s clips, loaded as `melfusion train` would."""
    from melfusion.training.config import load_config

    values = dict(stage="music", manifest=str(manifest), out_dir=str(tmp_path / name), init="tiny", steps=4,
                  batch_size=2, checkpoint_every=2, log_every=1, val_every=2, clip_seconds=1.0, warmup_steps=1,
                  lr=1e-3, cache_dir=str(tmp_path / "cache"))
    values.update(over)
    return load_config(write_config(tmp_path / f"{name}.toml", **values))
