"""Caches that make CPU training fast, built once per data set and reused across runs.

Each cache is one safetensors file named by a digest of everything its contents depend on
(the manifest's records, the settings, the weights of the frozen model that made it), so a
changed input never reads a stale cache. Kept per record, in the manifest's order:

- `mels`: log-mels `(frames, mels)` of the audio;
- `images`: pixels `(3, size, size)` in [0, 1] at the T2I model's resolution;
- `text`: caption token embeddings `(tokens, dim)` and masks from the frozen text encoder;
- `audio_latents`: audio VAE latent means `(c, frames/f, mels/f)`;
- `trajectories`: DDIM-inverted image latents `(steps + 1, c, h, w)` from the frozen T2I model.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from melfusion.atomic import atomic_file
from melfusion.errors import MelFusionError


def digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.nn.Module):
            for name, t in sorted(p.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def cached(cache_dir: Path | None, name: str, key: str, build) -> dict[str, torch.Tensor]:
    """Load `name-key.safetensors` from `cache_dir`, or build it (a dict of tensors) and save it atomically."""
    if cache_dir is None:
        return {k: v.contiguous() for k, v in build().items()}
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{name}-{key}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))
        except Exception:  # a damaged cache file is rebuilt, never trusted
            path.unlink(missing_ok=True)
    # Contiguous, whatever layout the kernels that built them chose (a VAE may return
    # channels-last tensors): the same bits in the same layout give the same training run
    # whether the cache was built now or read from disk.
    tensors = {k: v.contiguous() for k, v in build().items()}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp))
    return tensors


def record_key(entries) -> list:
    """What the audio and image caches depend on: ids and files, not captions (a manifest that
    rewrites only the captions reuses them; text caches are keyed by the texts themselves)."""
    return [[e.id, str(Path(e.audio_path).resolve()), str(Path(e.image_path).resolve())] for e in entries]


def build_mels(entries, mel_config, frames: int, progress=True) -> torch.Tensor:
    from melfusion.audio.io import read_audio
    from melfusion.audio.mel import MelSpectrogram, fit_frames

    mel_fn = MelSpectrogram(mel_config)
    out = torch.empty(len(entries), frames, mel_config.n_mels)
    for i, e in enumerate(tqdm(entries, desc="cache: mels", disable=not progress, leave=False)):
        wave = torch.from_numpy(read_audio(e.audio_path, mel_config.sample_rate))
        out[i] = fit_frames(mel_fn(wave), frames)[0]
    return out


def build_images(entries, size: int, progress=True) -> torch.Tensor:
    from melfusion.images import image_to_tensor, load_image

    out = torch.empty(len(entries), 3, size, size)
    for i, e in enumerate(tqdm(entries, desc="cache: images", disable=not progress, leave=False)):
        out[i] = image_to_tensor(load_image(e.image_path), size)
    return out


@torch.no_grad()
def build_text(texts: list[str], encoder, batch: int = 64, progress=True) -> dict[str, torch.Tensor]:
    embs, masks = [], []
    for i in tqdm(range(0, len(texts), batch), desc="cache: text", disable=not progress, leave=False):
        e, m = encoder.encode(texts[i:i + batch])
        embs.append(e)
        masks.append(m)
    return {"emb": torch.cat(embs), "mask": torch.cat(masks)}


@torch.no_grad()
def build_audio_latents(mels: torch.Tensor, audio_vae, batch: int = 16, progress=True) -> torch.Tensor:
    out = []
    for i in tqdm(range(0, len(mels), batch), desc="cache: audio latents", disable=not progress, leave=False):
        out.append(audio_vae.encode(mels[i:i + batch]))
    return torch.cat(out)


@torch.no_grad()
def build_trajectories(images: torch.Tensor, t2i, steps: int, refine: int = 0, batch: int = 32,
                       progress=True) -> dict[str, torch.Tensor]:
    lat, timesteps, offset = [], None, 1
    for i in tqdm(range(0, len(images), batch), desc="cache: image inversions", disable=not progress, leave=False):
        traj = t2i.invert(t2i.encode_image(images[i:i + batch]), steps, refine_iters=refine)
        lat.append(traj.latents.transpose(0, 1))  # (batch, steps + 1, c, h, w)
        timesteps, offset = traj.timesteps, traj.feature_offset
    return {"latents": torch.cat(lat), "timesteps": torch.tensor(timesteps),
            "feature_offset": torch.tensor(offset)}


def check_finite(name: str, t: torch.Tensor):
    if not torch.isfinite(t).all():
        raise MelFusionError(f"cache {name} holds non-finite values; delete it and check the data")


def as_numpy_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
