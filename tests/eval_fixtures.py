"""Tiny SynthMeL-like fixtures for the evaluation tests: a manifest of a few tone clips and random judges."""
import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from melfusion.metrics.embedders import synthmel as sm

INSTRUMENTS = ["bass", "drums", "piano"]


def tone(freq: float, seconds: float = 2.0, rate: int = 16000, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.1 * np.sin(2 * np.pi * 2 * freq * t)
    if noise:
        wave = wave + noise * np.random.default_rng(seed).standard_normal(t.size)
    return wave.astype(np.float32)


def make_manifest(root: Path, n: int = 3, split: str = "test", seconds: float = 2.0) -> Path:
    """n records in `split`, each a tone clip, a flat-colour PNG and a caption; returns the manifest path."""
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        rid = f"fx-{i:03d}"
        sf.write(root / "audio" / f"{rid}.wav", tone(220.0 * (1 + i / 4), seconds), 16000, subtype="PCM_16")
        Image.new("RGB", (32, 32), (40 * i % 255, 120, 200)).save(root / "images" / f"{rid}.png")
        lines.append({"id": rid, "image": f"images/{rid}.png", "audio": f"audio/{rid}.wav", "split": split,
                      "caption": f"A {sm.GENRES[i % 15]} piece with piano and bass, number {i}.",
                      "genre": sm.GENRES[i % 15], "mode": sm.MODES[i % 2], "energy": sm.ENERGIES[i % 2],
                      "drums": False, "instruments": ["piano", "bass"]})
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


def make_judges(root: Path, seed: int = 0) -> Path:
    """Random judges in the shipped layout (audio/, audio_text/, image_text/)."""
    torch.manual_seed(seed)
    sm.save_judge(sm.AudioJudgeNet(len(INSTRUMENTS)).eval(), root / "audio",
                  {"kind": "audio", "instruments": INSTRUMENTS, "channels": 96, "embed_dim": 128})
    for kind in ("audio_text", "image_text"):
        sm.save_judge(sm.ContrastiveNet(kind).eval(), root / kind, {"kind": kind, "dim": 128})
    return root
