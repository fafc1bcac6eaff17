"""An auxiliary harmony loss for the music stage (issue 12, D): beyond the paper.

Diagnostic A showed that the diffusion loss alone does not make the music's mode follow even a
caption that states it: the third of a chord moves one semitone, a small change in a 64-band mel
and a smaller one in its latent, which the latent MSE hardly weighs. This term weighs it. The
predicted clean latent goes through the frozen audio VAE's decoder to a log-mel; a fixed map
folds the mel bands above `f_lo` (where a band is narrower than about a semitone) onto the twelve
pitch classes; pooled over the crop and normalised, that pitch-class profile is compared (L1)
with the one of the clip's own mel over the same frames.

The map is a fixed function of the mel bands' centre frequencies, not a learned network, and
it is not the evaluation judge's chroma (which reads the STFT, melfusion.metrics).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from melfusion.audio.mel import MelConfig, hz_to_mel, mel_to_hz

PITCH_CLASSES = 12


def band_centres(cfg: MelConfig) -> np.ndarray:
    """The centre frequency (Hz) of each mel band, as `mel_filter_bank` lays them out."""
    edges = mel_to_hz(np.linspace(hz_to_mel(cfg.f_min), hz_to_mel(cfg.f_max), cfg.n_mels + 2))
    return edges[1:-1]


def pitch_class_map(cfg: MelConfig = MelConfig(), f_lo: float = 800.0, f_hi: float | None = None) -> torch.Tensor:
    """`(n_mels, 12)`: each band between `f_lo` and `f_hi` shared between the two pitch classes
    nearest its centre (triangular in semitones, A = 9 at 440 Hz); other bands weigh nothing."""
    centres = band_centres(cfg)
    f_hi = cfg.f_max if f_hi is None else f_hi
    out = np.zeros((cfg.n_mels, PITCH_CLASSES))
    for b, f in enumerate(centres):
        if not f_lo <= f <= f_hi:
            continue
        pc = (12.0 * math.log2(f / 440.0) + 9.0) % 12.0
        for c in range(PITCH_CLASSES):
            d = abs(pc - c)
            d = min(d, 12.0 - d)
            out[b, c] = max(0.0, 1.0 - d)
    return torch.from_numpy(out).float()


def frame_profiles(log_mel: torch.Tensor, pc_map: torch.Tensor) -> torch.Tensor:
    """Log-mel `(batch, frames, mels)` -> pitch-class energy per frame `(batch, frames, 12)`."""
    return log_mel.float().exp() @ pc_map.to(log_mel.device)


def pooled_profile(frames: torch.Tensor) -> torch.Tensor:
    """Per-frame profiles `(batch, frames, 12)` -> one distribution per clip `(batch, 12)`."""
    total = frames.sum(dim=1)
    return total / total.sum(dim=-1, keepdim=True).clamp(min=1e-8)


def latent_frame_profiles(log_mel: torch.Tensor, pc_map: torch.Tensor, factor: int, batch: int = 256) -> torch.Tensor:
    """Mels `(records, frames, mels)` -> pitch-class energy summed over each latent frame's `factor`
    mel frames `(records, frames // factor, 12)`: the target of any latent crop is a sum of rows."""
    rows = []
    for s in range(0, len(log_mel), batch):
        p = frame_profiles(log_mel[s:s + batch], pc_map)
        n = p.shape[1] // factor
        rows.append(p[:, :n * factor].reshape(p.shape[0], n, factor, PITCH_CLASSES).sum(dim=2))
    return torch.cat(rows)


class HarmonyLoss:
    """`loss(clean_latent_pred, target_profile)`: L1 between pitch-class distributions, averaged.

    A plain object, not a module, so that the frozen decoder is neither trained nor saved in
    the stage's checkpoints."""

    def __init__(self, audio_vae, mel_cfg: MelConfig, f_lo: float = 800.0, clamp: float = 6.0):
        self.audio_vae = audio_vae
        self.pc_map = pitch_class_map(mel_cfg, f_lo)
        self.clamp = clamp
        audio_vae.requires_grad_(False)
        audio_vae.eval()

    def profiles(self, clean_latent: torch.Tensor) -> torch.Tensor:
        z = clean_latent.clamp(-self.clamp, self.clamp)
        return pooled_profile(frame_profiles(self.audio_vae.decode(z), self.pc_map))

    def __call__(self, clean_latent: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """`target`: `(batch, 12)` pitch-class energies (any scale; normalised here)."""
        target = target / target.sum(dim=-1, keepdim=True).clamp(min=1e-8)
        return (self.profiles(clean_latent) - target.to(clean_latent.device)).abs().sum(dim=-1).mean()
