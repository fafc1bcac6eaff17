"""Rendering MIDI to audio with FluidSynth and a General MIDI sound font (Debian packages
`fluidsynth` and `timgm6mb-soundfont`), then loudness normalisation.

FluidSynth writes 32-bit float so that no dither noise (which is random) enters the file; the
16-bit conversion happens in `melfusion.audio.io.write_wav`, without dither. Chorus is off in
the synth and reverb is a fixed algorithm, so the same MIDI renders to the same samples.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from melfusion.errors import MelFusionError

DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/TimGM6mb.sf2"
TARGET_RMS_DB = -18.0      # loudness target (RMS, dBFS)
PEAK_LIMIT = 0.89          # about -1 dBFS: never clipped after 16-bit conversion
SILENCE_RMS_DB = -50.0     # anything quieter is a failed render


def find_fluidsynth() -> str:
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise MelFusionError("fluidsynth is not installed (Debian: apt-get install fluidsynth timgm6mb-soundfont)")
    return exe


def check_soundfont(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise MelFusionError(f"sound font not found: {p} (Debian: apt-get install timgm6mb-soundfont)")
    return p


RENDER_TIMEOUT_S = 120
RENDER_TRIES = 3


def run_with_retries(cmd: list[str]) -> subprocess.CompletedProcess:
    """FluidSynth renders 10 s in well under a second, but on a loaded machine it has been seen to
    hang; a hung render is killed after RENDER_TIMEOUT_S and tried again, RENDER_TRIES times in all."""
    for _ in range(RENDER_TRIES):
        try:
            return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=RENDER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            continue
    raise MelFusionError(f"fluidsynth did not finish within {RENDER_TIMEOUT_S} s, {RENDER_TRIES} times")


def render_midi(midi: bytes, sample_rate: int, soundfont: str | os.PathLike = DEFAULT_SOUNDFONT) -> np.ndarray:
    """Mono float32 samples of a Standard MIDI File, as FluidSynth plays it."""
    exe = find_fluidsynth()
    sf2 = check_soundfont(soundfont)
    with tempfile.TemporaryDirectory(prefix="melfusion-render-") as tmp:
        mid, wav = Path(tmp) / "in.mid", Path(tmp) / "out.wav"
        mid.write_bytes(midi)
        cmd = [exe, "-ni", "-q", "-g", "0.5", "-r", str(sample_rate), "-T", "wav", "-O", "float",
               "-o", "synth.chorus.active=0", "-o", "synth.reverb.active=1", "-o", "synth.cpu-cores=1",
               "-o", "audio.period-size=64", "-F", str(wav), str(sf2), str(mid)]
        proc = run_with_retries(cmd)
        if proc.returncode != 0 or not wav.is_file():
            msg = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()
            raise MelFusionError(f"fluidsynth failed: {msg[-1] if msg else 'no output'}")
        data, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise MelFusionError(f"fluidsynth wrote {rate} Hz, expected {sample_rate} Hz")
    return data.mean(axis=1)


def rms_db(wave: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(wave, dtype=np.float64))) + 1e-12))


def finish(wave: np.ndarray, sample_rate: int, duration_s: float) -> np.ndarray:
    """Exactly `duration_s` long, loudness-normalised, peak-limited, with 5 ms / 50 ms fades."""
    n = int(round(duration_s * sample_rate))
    wave = np.asarray(wave, dtype=np.float64)[:n]
    if wave.size < n:
        wave = np.pad(wave, (0, n - wave.size))
    if rms_db(wave) < SILENCE_RMS_DB - 40:
        raise MelFusionError("rendered audio is silent")
    wave = wave * 10 ** ((TARGET_RMS_DB - rms_db(wave)) / 20)
    peak = np.max(np.abs(wave))
    if peak > PEAK_LIMIT:
        wave *= PEAK_LIMIT / peak
    fi, fo = int(0.005 * sample_rate), int(0.05 * sample_rate)
    wave[:fi] *= np.linspace(0.0, 1.0, fi)
    wave[n - fo:] *= np.linspace(1.0, 0.0, fo)
    return wave.astype(np.float32)
