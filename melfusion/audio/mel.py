"""Waveform <-> log-mel front end with AudioLDM's settings, written in torch.

AudioLDM (and TANGO, MeLFusion) use 16 kHz audio, a 1024-point STFT with hop 160 (100 frames
per second), 64 Slaney-style mel bands over 0-8 kHz on the magnitude spectrum, and the natural
log clamped at 1e-5. Spectrograms here are laid out `(batch, frames, mels)`; the audio VAE sees
them as images `(batch, 1, frames, mels)`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

LOG_FLOOR = 1e-5


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 160
    win_length: int = 1024
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float = 8000.0

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3.0)
    break_mel = 1000.0 / (200.0 / 3.0)
    log_step = math.log(6.4) / 27.0
    logarithmic = break_mel + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step
    return np.where(hz >= 1000.0, logarithmic, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    break_mel = 1000.0 / (200.0 / 3.0)
    log_step = math.log(6.4) / 27.0
    return np.where(mel >= break_mel, 1000.0 * np.exp(log_step * (mel - break_mel)), mel * (200.0 / 3.0))


def mel_filter_bank(cfg: MelConfig) -> np.ndarray:
    """Triangular filters `(n_mels, n_fft // 2 + 1)`, area-normalised (Slaney), float64."""
    fft_freqs = np.linspace(0.0, cfg.sample_rate / 2.0, cfg.n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(cfg.f_min), hz_to_mel(cfg.f_max), cfg.n_mels + 2))
    widths = np.diff(edges)
    rising = (fft_freqs[None, :] - edges[:-2, None]) / widths[:-1, None]
    falling = (edges[2:, None] - fft_freqs[None, :]) / widths[1:, None]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    # Each triangle's area is made equal, so louder bands do not come from wider filters.
    filters *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return filters


class MelSpectrogram(torch.nn.Module):
    """`forward(wave (batch, samples)) -> log-mel (batch, frames, mels)`, frames = 1 + samples // hop."""

    def __init__(self, cfg: MelConfig = MelConfig()):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.win_length, periodic=True), persistent=False)
        self.register_buffer("filters", torch.from_numpy(mel_filter_bank(cfg)).float(), persistent=False)

    def magnitude(self, wave: torch.Tensor) -> torch.Tensor:
        """STFT magnitude `(batch, n_fft // 2 + 1, frames)`, centred frames with reflect padding."""
        spec = torch.stft(
            wave.float(), self.cfg.n_fft, self.cfg.hop_length, self.cfg.win_length,
            window=self.window, center=True, pad_mode="reflect", return_complex=True,
        )
        return spec.abs()

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() == 1:
            wave = wave[None]
        mel = self.filters @ self.magnitude(wave)
        return torch.log(mel.clamp(min=LOG_FLOOR)).transpose(1, 2)


def frames_for(duration_s: float, cfg: MelConfig, multiple: int) -> int:
    """Mel frames that cover `duration_s`, rounded up to a multiple the models can downsample."""
    frames = math.ceil(duration_s * cfg.frames_per_second)
    return multiple * math.ceil(frames / multiple)


def fit_frames(mel: torch.Tensor, frames: int) -> torch.Tensor:
    """Crop or pad `(batch, frames, mels)` along time to `frames`; padding is silence (the log floor)."""
    have = mel.shape[1]
    if have >= frames:
        return mel[:, :frames]
    pad = mel.new_full((mel.shape[0], frames - have, mel.shape[2]), math.log(LOG_FLOOR))
    return torch.cat([mel, pad], dim=1)
