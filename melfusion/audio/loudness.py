"""Mastering a finished piece: a stated integrated loudness, a short fade at the end, no clipping.

The rule (`master`):
1. The last `fade_ms` (50 ms) fade out along a half cosine to exactly zero, so a piece never
   ends on a click, whatever the vocoder left in its last frame.
2. The integrated loudness is measured with `pyloudnorm` (ITU-R BS.1770-4: K-weighting, 400 ms
   blocks, the -70 LUFS absolute and -10 LU relative gates) and one gain brings it to the target
   (-14 LUFS by default, what posting platforms normalise to).
3. Peaks are held at or below the ceiling (-1 dBFS) measured on the signal oversampled 4 times
   (a "true-ish" peak: most of what lies between the samples): a look-ahead limiter lowers the
   gain only around the peaks that need it, never more than they need (the gain curve is a
   20 ms minimum followed by a 10 ms average, so it never rises above what each sample needs),
   and whatever the curve leaves over the ceiling is scaled off the whole piece.
4. Limiting takes a little loudness away: steps 2 and 3 repeat (at most 4 times) until the
   loudness is within 0.05 LU of the target. A piece so peaky that the target needs more than
   that ends a little under it, never over the ceiling.
A piece below the absolute gate (silence, or as good as) is left as it is: no gain is computed
from a loudness of minus infinity.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from melfusion.errors import MelFusionError

DEFAULT_LOUDNESS_LUFS = -14.0
LOUDNESS_RANGE = (-40.0, -6.0)   # what a --loudness may ask for
CEILING_DBFS = -1.0
FADE_MS = 50.0
OVERSAMPLE = 4
SILENT_LUFS = -70.0              # BS.1770's absolute gate: below it a piece has no loudness to set
TOLERANCE_LU = 0.05
ROUNDS = 4


def check_loudness(lufs) -> float:
    low, high = LOUDNESS_RANGE
    if isinstance(lufs, bool) or not isinstance(lufs, (int, float)) or not math.isfinite(lufs) \
            or not low <= lufs <= high:
        raise MelFusionError(f"loudness must be between {low:g} and {high:g} LUFS, got {lufs}")
    return float(lufs)


def integrated_loudness(wave: np.ndarray, sample_rate: int) -> float:
    """BS.1770-4 integrated loudness in LUFS; -inf for silence or a piece shorter than one 400 ms block."""
    import pyloudnorm

    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    if len(wave) <= int(0.4 * sample_rate) or not np.any(wave):
        return -math.inf
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        return float(pyloudnorm.Meter(sample_rate).integrated_loudness(wave))


def fade_out(wave: np.ndarray, sample_rate: int, fade_ms: float = FADE_MS) -> np.ndarray:
    """The last `fade_ms` along a half cosine from 1 to exactly 0 (a copy)."""
    wave = np.array(wave, dtype=np.float64)
    n = min(len(wave), int(round(fade_ms * sample_rate / 1000)))
    if n >= 2:
        ramp = 0.5 * (1 + np.cos(np.pi * np.arange(n) / (n - 1)))
        ramp[-1] = 0.0
        wave[-n:] *= ramp
    elif n == 1:
        wave[-1] = 0.0
    return wave


def _oversampled(wave: np.ndarray) -> np.ndarray:
    from scipy.signal import resample_poly

    return resample_poly(wave, OVERSAMPLE, 1)


def true_peak(wave: np.ndarray) -> float:
    """The largest magnitude of the samples and of the signal between them (4x oversampled)."""
    wave = np.asarray(wave, dtype=np.float64)
    if len(wave) == 0:
        return 0.0
    return float(max(np.abs(wave).max(), np.abs(_oversampled(wave)).max()))


def _sample_peaks(wave: np.ndarray) -> np.ndarray:
    """Per sample, the largest oversampled magnitude within one sample of it."""
    from scipy.ndimage import maximum_filter1d

    up = np.abs(_oversampled(wave))[: OVERSAMPLE * len(wave)]
    up = np.pad(up, (0, OVERSAMPLE * len(wave) - len(up)))
    peaks = np.maximum(up.reshape(len(wave), OVERSAMPLE).max(axis=1), np.abs(wave))
    return maximum_filter1d(peaks, size=3, mode="nearest")


def limit(wave: np.ndarray, sample_rate: int, ceiling_dbfs: float = CEILING_DBFS,
          hold_ms: float = 10.0, smooth_ms: float = 5.0) -> np.ndarray:
    """Peaks held at or below `ceiling_dbfs`: a gain curve that is, at each sample, the smallest
    gain any sample within `hold_ms` needs, then averaged over `smooth_ms` either side (an
    average of values each at most what this sample needs, so never more than it needs)."""
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    wave = np.asarray(wave, dtype=np.float64)
    ceiling = 10 ** (ceiling_dbfs / 20)
    if len(wave) == 0:
        return wave.copy()
    peaks = _sample_peaks(wave)
    if peaks.max() > ceiling:
        need = np.minimum(1.0, ceiling / np.maximum(peaks, 1e-12))
        hold = max(1, int(hold_ms * sample_rate / 1000))
        smooth = min(hold, max(1, int(smooth_ms * sample_rate / 1000)))
        gain = minimum_filter1d(need, size=2 * hold + 1, mode="nearest")
        gain = uniform_filter1d(gain, size=2 * smooth + 1, mode="nearest")
        wave = wave * np.minimum(gain, need)  # the average's rounding never lets a sample over
    peak = true_peak(wave)
    if peak > ceiling:  # what the smooth curve leaves between the samples
        wave = wave * (ceiling / peak)
    return wave


def master(wave: np.ndarray, sample_rate: int, target_lufs: float = DEFAULT_LOUDNESS_LUFS,
           ceiling_dbfs: float = CEILING_DBFS, fade_ms: float = FADE_MS) -> np.ndarray:
    """One piece `(samples,)`, or several `(batch, samples)`, mastered by the rule in the module
    docstring; float32 out, the shape it came in."""
    wave = np.asarray(wave)
    if wave.ndim == 2:
        return np.stack([master(w, sample_rate, target_lufs, ceiling_dbfs, fade_ms) for w in wave])
    x = fade_out(wave, sample_rate, fade_ms)
    loudness = integrated_loudness(x, sample_rate)
    if not loudness > SILENT_LUFS:
        return limit(x, sample_rate, ceiling_dbfs).astype(np.float32)
    for _ in range(ROUNDS):
        x = limit(x * 10 ** ((target_lufs - loudness) / 20), sample_rate, ceiling_dbfs)
        loudness = integrated_loudness(x, sample_rate)
        if abs(loudness - target_lufs) <= TOLERANCE_LU or not loudness > SILENT_LUFS:
            break
    return x.astype(np.float32)
