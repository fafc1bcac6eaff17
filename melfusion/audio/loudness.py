"""Mastering a finished piece: a stated integrated loudness, a short fade at the end, no clipping.

The rule (`master`):
1. The last `fade_ms` (50 ms) fade out along a half cosine to exactly zero, so a piece never
   ends on a click, whatever the vocoder left in its last frame.
2. The integrated loudness is measured by ITU-R BS.1770-4 (K-weighting, 400 ms blocks every
   100 ms, the -70 LUFS absolute and -10 LU relative gates) and one gain brings it to the target
   (-14 LUFS by default, what posting platforms normalise to). The meter is written here on numpy
   (the K-weighting's two biquads, designed for the piece's sample rate from the standard's
   analogue prototype, applied through their frequency response) so that mastering imports no
   scipy.signal on the command line's start-up; the tests hold it to the standard's
   published filters and reference tone, and to `pyloudnorm` (a test dependency) within 0.2 LU.
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


# BS.1770's K-weighting prototype: a high shelf (+4 dB above ~1.7 kHz), then a high pass at ~38 Hz.
_SHELF = dict(f0=1681.974450955533, gain_db=3.999843853973347, q=0.7071752369554196)
_HIGH_PASS = dict(f0=38.13547087602444, q=0.5003270373238773)


def _k_weighting(sample_rate: int):
    """The two biquads `(b, a)` of BS.1770's pre-filter at `sample_rate` (bilinear transform, prewarped)."""
    k = math.tan(math.pi * _SHELF["f0"] / sample_rate)
    vh = 10 ** (_SHELF["gain_db"] / 20)
    vb = vh ** 0.4996667741545416
    a0 = 1 + k / _SHELF["q"] + k * k
    shelf = (np.array([(vh + vb * k / _SHELF["q"] + k * k) / a0, 2 * (k * k - vh) / a0,
                       (vh - vb * k / _SHELF["q"] + k * k) / a0]),
             np.array([1.0, 2 * (k * k - 1) / a0, (1 - k / _SHELF["q"] + k * k) / a0]))
    k = math.tan(math.pi * _HIGH_PASS["f0"] / sample_rate)
    a0 = 1 + k / _HIGH_PASS["q"] + k * k
    high_pass = (np.array([1.0, -2.0, 1.0]),
                 np.array([1.0, 2 * (k * k - 1) / a0, (1 - k / _HIGH_PASS["q"] + k * k) / a0]))
    return shelf, high_pass


def k_weighted(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """The piece through the K-weighting filters (causal, from rest), computed as the product of
    the biquads' frequency responses on a grid long enough that the filters' decay never wraps."""
    n = len(wave)
    size = 1 << int(math.ceil(math.log2(n + sample_rate)))  # a second of room: the tails decay in ms
    z = np.exp(-2j * np.pi * np.fft.rfftfreq(size))
    response = np.ones_like(z)
    for b, a in _k_weighting(sample_rate):
        response *= (b[0] + b[1] * z + b[2] * z * z) / (a[0] + a[1] * z + a[2] * z * z)
    return np.fft.irfft(np.fft.rfft(wave, size) * response, size)[:n]


def integrated_loudness(wave: np.ndarray, sample_rate: int) -> float:
    """BS.1770-4 integrated loudness in LUFS (mono); -inf for silence or a piece shorter than one
    400 ms block."""
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    block, hop = int(round(0.4 * sample_rate)), int(round(0.1 * sample_rate))
    if len(wave) <= block or not np.any(wave):
        return -math.inf
    power = np.square(k_weighted(wave, sample_rate))
    total = np.concatenate([[0.0], np.cumsum(power)])
    starts = np.arange(0, len(wave) - block + 1, hop)
    z = (total[starts + block] - total[starts]) / block  # mean square of each block
    with np.errstate(divide="ignore"):
        loud = -0.691 + 10 * np.log10(z)
    kept = z[loud > SILENT_LUFS]
    if len(kept) == 0:
        return -math.inf
    relative = -0.691 + 10 * np.log10(kept.mean()) - 10
    kept = kept[-0.691 + 10 * np.log10(kept) > relative]
    return float(-0.691 + 10 * np.log10(kept.mean()))


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
    """The band-limited signal at 4 times the rate (zero-padded spectrum; the ends wrap, which a
    faded-out piece does not mind)."""
    n = len(wave)
    spec = np.fft.rfft(wave)
    if n % 2 == 0 and len(spec) > 1:
        spec[-1] *= 0.5  # the Nyquist bin splits between the positive and negative halves
    return np.fft.irfft(spec, OVERSAMPLE * n) * OVERSAMPLE


def true_peak(wave: np.ndarray) -> float:
    """The largest magnitude of the samples and of the signal between them (4x oversampled)."""
    wave = np.asarray(wave, dtype=np.float64)
    if len(wave) == 0:
        return 0.0
    return float(max(np.abs(wave).max(), np.abs(_oversampled(wave)).max()))


def _sample_peaks(wave: np.ndarray) -> np.ndarray:
    """Per sample, the largest oversampled magnitude within one sample of it."""
    up = np.abs(_oversampled(wave))[: OVERSAMPLE * len(wave)]
    up = np.pad(up, (0, OVERSAMPLE * len(wave) - len(up)))
    peaks = np.maximum(up.reshape(len(wave), OVERSAMPLE).max(axis=1), np.abs(wave))
    return _sliding(peaks, 1, np.maximum)


def _sliding(x: np.ndarray, radius: int, op) -> np.ndarray:
    """`op` (np.minimum or np.maximum) over the window [i - radius, i + radius] of each sample, the
    ends extended by their edge values (van Herk / Gil-Werman: two running passes per block)."""
    width = 2 * radius + 1
    n = len(x)
    padded = np.pad(x, (radius, radius + (-(n + 2 * radius)) % width), mode="edge")
    blocks = padded.reshape(-1, width)
    forward = op.accumulate(blocks, axis=1).reshape(-1)
    backward = op.accumulate(blocks[:, ::-1], axis=1)[:, ::-1].reshape(-1)
    # The window starting at j covers the end of j's block (backward) and the start of the next (forward).
    return op(backward[:n], forward[width - 1:width - 1 + n])


def _moving_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """The mean over [i - radius, i + radius], the ends extended by their edge values."""
    padded = np.pad(x, (radius + 1, radius), mode="edge")
    total = np.cumsum(padded)
    return (total[2 * radius + 1:] - total[:-2 * radius - 1]) / (2 * radius + 1)


def limit(wave: np.ndarray, sample_rate: int, ceiling_dbfs: float = CEILING_DBFS,
          hold_ms: float = 10.0, smooth_ms: float = 5.0) -> np.ndarray:
    """Peaks held at or below `ceiling_dbfs`: a gain curve that is, at each sample, the smallest
    gain any sample within `hold_ms` needs, then averaged over `smooth_ms` either side (an
    average of values each at most what this sample needs, so never more than it needs)."""
    wave = np.asarray(wave, dtype=np.float64)
    ceiling = 10 ** (ceiling_dbfs / 20)
    if len(wave) == 0:
        return wave.copy()
    peaks = _sample_peaks(wave)
    if peaks.max() <= ceiling:  # the peaks hold the true peak already: nothing to do
        return wave.copy()
    need = np.minimum(1.0, ceiling / np.maximum(peaks, 1e-12))
    hold = max(1, int(hold_ms * sample_rate / 1000))
    smooth = min(hold, max(1, int(smooth_ms * sample_rate / 1000)))
    gain = _moving_mean(_sliding(need, hold, np.minimum), smooth)
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
