"""The audio VAE: diffusers' `AutoencoderKL` over the log-mel seen as a one-channel image.

As in AudioLDM, the mel `(batch, frames, mels)` becomes `(batch, 1, frames, mels)` and is
compressed to `(batch, latent_channels, frames / f, mels / f)` with f = 4 by default.
"""
from __future__ import annotations

from pathlib import Path

import torch

from melfusion.errors import MelFusionError


class AudioVAE(torch.nn.Module):
    def __init__(self, vae):
        """`vae`: diffusers' `AutoencoderKL` or the lean runtime's (`melfusion.lean.vae`)."""
        super().__init__()
        self.vae = vae

    @property
    def factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    def encode(self, log_mel: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False):
        """`(batch, frames, mels)` -> scaled latent `(batch, c, frames/f, mels/f)` (mean unless `sample`)."""
        dist = self.vae.encode(log_mel[:, None]).latent_dist
        z = dist.sample(generator) if sample else dist.mean
        return z * self.scaling_factor

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> log-mel `(batch, frames, mels)`."""
        return self.vae.decode(latent / self.scaling_factor).sample[:, 0]

    def save_pretrained(self, directory: str | Path) -> None:
        self.vae.save_pretrained(str(directory))

    @classmethod
    def from_pretrained(cls, directory: str | Path, lean: bool = False) -> "AudioVAE":
        """`lean`: the lean runtime's autoencoder where it covers the config (no diffusers import)."""
        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise MelFusionError(f"no audio VAE in {directory} (config.json missing)")
        from melfusion.lean import load_vae

        try:
            return cls(load_vae(directory, lean))
        except (OSError, ValueError) as exc:
            raise MelFusionError(f"cannot load the audio VAE in {directory}: {str(exc).splitlines()[0]}") from None
