"""Vocoders behind one interface: log-mel `(batch, frames, mels)` in, waveform `(batch, samples)` out.

`GriffinLimVocoder` needs no weights (the tiny and small presets use it); `HifiGanVocoder` loads
AudioLDM's HiFi-GAN from a local directory in the `SpeechT5HifiGan` layout (config.json +
weights), as diffusers' AudioLDM pipelines keep it under `vocoder/`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from melfusion.audio.mel import MelConfig, mel_filter_bank
from melfusion.errors import MelFusionError

CONFIG_NAME = "melfusion_vocoder.json"


class Vocoder(torch.nn.Module):
    sample_rate: int

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:  # (batch, frames, mels) -> (batch, samples)
        raise NotImplementedError

    def save_pretrained(self, directory: str | Path) -> None:
        raise NotImplementedError


class GriffinLimVocoder(Vocoder):
    """Phase reconstruction from a log-mel, no weights.

    The mel is mapped back to a non-negative linear magnitude by `nnls_iter` multiplicative
    updates for min ||F s - mel|| with s >= 0 (the pseudo-inverse alone smears energy across
    bands), then `n_iter` rounds of fast Griffin-Lim (Perraudin et al. 2013: a momentum term on
    the consistent spectrogram) find a phase. The first phase is drawn from a fixed seed so the
    same mel always gives the same waveform.
    """

    def __init__(self, mel: MelConfig = MelConfig(), n_iter: int = 32, momentum: float = 0.99, nnls_iter: int = 10):
        super().__init__()
        self.mel, self.n_iter, self.momentum, self.nnls_iter = mel, n_iter, momentum, nnls_iter
        self.sample_rate = mel.sample_rate
        self.register_buffer("filters", torch.from_numpy(mel_filter_bank(mel)).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(mel.win_length, periodic=True), persistent=False)

    def linear_magnitude(self, mel: torch.Tensor) -> torch.Tensor:
        """`(batch, mels, frames)` mel energies -> `(batch, n_fft // 2 + 1, frames)` magnitudes."""
        f = self.filters
        target = f.T @ mel
        s = target.clamp(min=1e-8)
        for _ in range(self.nnls_iter):
            s = s * target / (f.T @ (f @ s) + 1e-10)
        return s

    def _stft(self, wave):
        return torch.stft(wave, self.mel.n_fft, self.mel.hop_length, self.mel.win_length,
                          window=self.window, center=True, pad_mode="reflect", return_complex=True)

    def _istft(self, spec, length):
        return torch.istft(spec, self.mel.n_fft, self.mel.hop_length, self.mel.win_length,
                           window=self.window, center=True, length=length)

    @torch.no_grad()
    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        mel = torch.exp(log_mel.float()).transpose(1, 2)  # (batch, mels, frames)
        magnitude = self.linear_magnitude(mel)
        length = (log_mel.shape[1] - 1) * self.mel.hop_length
        gen = torch.Generator().manual_seed(0)
        # The same starting phase for every clip of a batch, so a clip never depends on its batch.
        phase = torch.rand(magnitude.shape[1:], generator=gen).expand_as(magnitude) * 2 * math.pi
        spec = magnitude * torch.exp(1j * phase.to(magnitude.device))
        previous = torch.zeros_like(spec)
        for _ in range(self.n_iter):
            rebuilt = self._stft(self._istft(spec, length))
            accelerated = rebuilt + self.momentum / (1 + self.momentum) * (rebuilt - previous)
            previous = rebuilt
            # The magnitude with the accelerated phase: x |m| / |x| (a third of exp(i angle(x))'s time).
            spec = accelerated * (magnitude / accelerated.abs().clamp(min=1e-12))
        wave = self._istft(spec, length)
        # The pseudo-inverse loses the absolute level; bring peaks to a safe, audible level.
        peak = wave.abs().amax(dim=1, keepdim=True).clamp(min=1e-8)
        return wave / peak * 0.9

    def save_pretrained(self, directory):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps(
            {"kind": "griffin-lim", "n_iter": self.n_iter, "momentum": self.momentum,
             "nnls_iter": self.nnls_iter}, indent=2))


class HifiGanVocoder(Vocoder):
    """AudioLDM's HiFi-GAN (`transformers.SpeechT5HifiGan`); takes the log-mel as is."""

    def __init__(self, model):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.sample_rate = int(model.config.sampling_rate)

    @classmethod
    def from_pretrained(cls, directory):
        from transformers import SpeechT5HifiGan

        return cls(SpeechT5HifiGan.from_pretrained(str(directory)))

    @torch.no_grad()
    def forward(self, log_mel):
        wave = self.model(log_mel.to(self.model.dtype))
        return wave.reshape(log_mel.shape[0], -1).float()

    def save_pretrained(self, directory):
        self.model.save_pretrained(str(directory))
        (Path(directory) / CONFIG_NAME).write_text(json.dumps({"kind": "hifigan"}, indent=2))


def load_vocoder(directory: str | Path, mel: MelConfig) -> Vocoder:
    """A vocoder saved by `save_pretrained`, or a bare `SpeechT5HifiGan` directory."""
    directory = Path(directory)
    marker = directory / CONFIG_NAME
    if marker.is_file():
        cfg = json.loads(marker.read_text())
        kind = cfg.pop("kind", None)
        if kind == "griffin-lim":
            return GriffinLimVocoder(mel, **cfg)
        if kind != "hifigan":
            raise MelFusionError(f"unknown vocoder kind {kind!r} in {marker}")
    if not (directory / "config.json").is_file():
        raise MelFusionError(f"no vocoder in {directory} (expected {CONFIG_NAME} or a HiFi-GAN config.json)")
    return HifiGanVocoder.from_pretrained(directory)
