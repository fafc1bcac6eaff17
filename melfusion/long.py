"""Pieces longer than the model's window: composed window by window in latent space.

The music model was trained on clips of one length (its window, `pipe.defaults["duration_s"]`
unless the model says `window_s`). A longer piece is a row of windows of exactly that length,
each overlapping the one before. Window k+1 is denoised with its overlap held fixed: at every
step the overlap is replaced by window k's finished latent noised to the level the sampler has
just reached (RePaint's replacement, without its resampling), so the model continues what it
hears instead of starting afresh, and the overlap ends bit for bit equal to window k's latent.
The noise level comes from the scheduler itself (`level_after`), so DDIM and the multistep
solvers (DPM-Solver++, UniPC) are held the same way.

A window's last frames are not music to continue: the training clips end in a 50 ms fade and
the frames padding them to a length the models divide (`frames_for`) are silence, so a trained
model ends every window in a short silence. Each window but the last gives up that tail
(`tail_frames`: the padding plus WINDOW_TAIL_S): the next window holds the overlap before it
and composes the tail's frames anew, as continuation. The last window keeps its tail: it is
the piece's own ending.

Each window is decoded on its own (the VAE decoder sees the length it was trained on, and its
cost stays per window: its mid-block attention would grow with the square of the length if the
whole latent were decoded at once); the log-mels are cross-faded over each overlap, where both
windows decode the same latent and so nearly agree, and the whole log-mel is vocoded once, so
the waveform has no seam of its own. Time and memory grow linearly with the number of windows.

`spectral_change` and `join_report` measure whether the joins are heard: the frame-to-frame
change of the log-mel at each join against the same measure everywhere away from the joins.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

WINDOW_OVERLAP = 0.3  # the share of each window held from the one before (a model may say otherwise)
WINDOW_TAIL_S = 0.15  # past the padding, what a window's ending takes: the 50 ms fade and an STFT window


# -- planning ---------------------------------------------------------------------------------
def plan_windows(total: int, window: int, overlap: int, tail: int = 0) -> list[tuple[int, int]]:
    """Spans `[start, end)` (latent frames) of windows of length `window` covering `total`.

    Each window but the last is used up to `end - tail`; the next starts `overlap` frames before
    that (it holds them), so windows start every `window - tail - overlap` frames. The last is
    moved back to end exactly at `total` (it then holds more than `overlap`), so every window
    has the length the model was trained on."""
    if total <= window:
        return [(0, total)]
    if tail < 0 or not 1 <= overlap <= window - tail - 1:
        raise ValueError(f"overlap {overlap} and tail {tail} leave no new frames in a window of {window}")
    hop = window - tail - overlap
    starts = list(range(0, total - window, hop)) + [total - window]
    return [(s, s + window) for s in starts]


def tail_frames(window_frames: int, window_s: float, frames_per_second: float, factor: int,
                tail_s: float = WINDOW_TAIL_S) -> int:
    """A window's ending in latent frames: the padding past `window_s` and `tail_s` more, rounded up."""
    padding = window_frames - window_s * frames_per_second
    return math.ceil((padding + tail_s * frames_per_second) / factor - 1e-9)


def overlap_frames(window: int, share: float) -> int:
    """The held part of a window, in latent frames: at least one, never the whole window."""
    return min(window - 1, max(1, round(window * share)))


# -- holding the known part --------------------------------------------------------------------
def level_after(scheduler, index: int) -> float | None:
    """`alphas_cumprod` of the noise level the sample has after denoising step `index`; None
    after the last step (the clean sample).

    DDIM steps one stride back from t (`t - T // n`, diffusers' rule whatever the spacing); the
    multistep solvers step to their next sigma, `sigma = sqrt((1 - a) / a)`, i.e. `a = 1 / (1 + sigma^2)`."""
    timesteps = scheduler.timesteps
    if index + 1 >= len(timesteps):
        return None
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) == len(timesteps) + 1:
        sigma = float(sigmas[index + 1])
        return 1.0 / (1.0 + sigma * sigma)
    prev = int(timesteps[index]) - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    return float(scheduler.alphas_cumprod[prev]) if prev >= 0 else None


def level_at_start(scheduler) -> float:
    """`alphas_cumprod` at the first timestep: the level of the noise sampling starts from."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None and len(sigmas) == len(scheduler.timesteps) + 1:
        sigma = float(sigmas[0])
        return 1.0 / (1.0 + sigma * sigma)
    return float(scheduler.alphas_cumprod[int(scheduler.timesteps[0])])


@dataclass
class Held:
    """The first frames of a window, known in advance: `known` (batch, c, k, mels) is the clean
    latent there, `noise` the same shape (the window's own starting noise in those frames, so
    the held part follows one consistent path from noise to `known`)."""

    known: torch.Tensor
    noise: torch.Tensor

    @property
    def frames(self) -> int:
        return self.known.shape[2]

    def apply(self, latents: torch.Tensor, level: float | None) -> torch.Tensor:
        """`latents` with the held frames replaced by `known` at noise level `level`
        (`sqrt(a) x0 + sqrt(1 - a) eps`); exactly `known` at None (the clean end)."""
        if level is None:
            part = self.known
        else:
            part = math.sqrt(level) * self.known + math.sqrt(1.0 - level) * self.noise
        return torch.cat([part.to(latents.dtype), latents[:, :, self.frames:]], dim=2)


# -- joining the decoded windows ---------------------------------------------------------------
def crossfade_mels(joined: torch.Tensor | None, mel: torch.Tensor, start: int) -> torch.Tensor:
    """Append the log-mel `mel` (batch, frames, mels) of a window starting at frame `start` to
    `joined` (the windows so far), cross-fading linearly over the frames both cover.

    The weight of the new window rises from ~0 where the overlap begins (the old window's decode
    is in the middle of its context there) to ~1 where the new music begins (the new window's
    decode has context on both sides there, the old one is at its edge)."""
    if joined is None:
        return mel
    both = joined.shape[1] - start
    if both <= 0:
        raise ValueError("windows must overlap")
    ramp = (torch.arange(both, dtype=mel.dtype) + 0.5) / both
    ramp = ramp[None, :, None]
    mixed = (1 - ramp) * joined[:, start:] + ramp * mel[:, :both]
    return torch.cat([joined[:, :start], mixed, mel[:, both:]], dim=1)


# -- hearing the joins ---------------------------------------------------------------------------
def spectral_change(log_mel) -> np.ndarray:
    """`(frames, mels)` log-mel -> `(frames - 1,)`: the mean absolute change of each mel band
    from one frame to the next (spectral flux on the log scale, both directions counted)."""
    m = np.asarray(log_mel.detach().cpu() if isinstance(log_mel, torch.Tensor) else log_mel, dtype=np.float64)
    if m.ndim == 3:
        if m.shape[0] != 1:
            raise ValueError("one log-mel at a time: (frames, mels) or (1, frames, mels)")
        m = m[0]
    return np.abs(np.diff(m, axis=0)).mean(axis=1)


@dataclass
class JoinReport:
    at_joins: list[float]       # the change at each join (the largest within `reach` frames of it)
    interior: np.ndarray        # the same measure at every frame at least `guard` frames from any join
    ranks: list[float]          # each join's share of interior values below it (0.5: typical; 1: the largest)

    @property
    def interior_range(self) -> tuple[float, float]:
        return float(self.interior.min()), float(self.interior.max())

    @property
    def within_range(self) -> bool:
        """Every join changes no more than the most the piece changes anywhere away from them."""
        return all(v <= self.interior.max() for v in self.at_joins)

    def summary(self) -> dict:
        q = np.percentile(self.interior, [50, 95, 99])
        return {"joins": len(self.at_joins), "at_joins": [round(v, 4) for v in self.at_joins],
                "interior_median": float(q[0]), "interior_p95": float(q[1]), "interior_p99": float(q[2]),
                "interior_max": float(self.interior.max()), "join_ranks": [round(r, 3) for r in self.ranks],
                "within_range": self.within_range}


def join_report(log_mel, joins: list[int], reach: int = 1, guard: int = 8, edge: int = 32) -> JoinReport:
    """Frame-to-frame spectral change at the joins against the piece's own changes elsewhere.

    `joins`: mel frames where new music begins (the first frame after a held overlap).
    At a join the measure is the largest change within `reach` frames either side of it; the
    interior values are the same windowed maximum at every frame more than `guard` frames from
    every join and `edge` frames from either end (so both sides are measured alike: a maximum
    over 2 reach + 1 changes, never one change against a maximum). The ends are left out because
    they are no part of the music's flow: a trained model ends every piece as its training clips
    end, in a fade and a short silence, the largest change in the piece."""
    change = spectral_change(log_mel)
    n = len(change)
    width = 2 * reach + 1
    padded = np.pad(change, reach, mode="edge")
    windowed = np.lib.stride_tricks.sliding_window_view(padded, width).max(axis=1)  # (n,)
    # the change into join frame j is change[j - 1] (between frames j - 1 and j)
    at = [int(j) - 1 for j in joins]
    if any(not 0 <= i < n for i in at):
        raise ValueError(f"a join lies outside the log-mel's {n + 1} frames")
    keep = np.ones(n, dtype=bool)
    keep[:edge], keep[max(0, n - edge):] = False, False
    for i in at:
        keep[max(0, i - guard): i + guard + 1] = False
    interior = windowed[keep]
    if interior.size == 0:
        raise ValueError("no frames away from the joins to compare them with")
    values = [float(windowed[i]) for i in at]
    ranks = [float((interior < v).mean()) for v in values]
    return JoinReport(values, interior, ranks)
