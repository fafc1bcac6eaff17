"""Independent listeners: standard music analysis that knows nothing of this project.

The SynthMeL judges (`melfusion.metrics.judges`) were trained here, on SynthMeL; a model could
learn to please them without making music a musician would call minor or busy. These are the
second opinion, used to check that generated music follows pictures the model never saw:

- `key_profile_score`: librosa chroma correlated with the Krumhansl-Kessler major and minor
  profiles in all 12 keys; the best major correlation minus the best minor one (> 0: major).
- `onset_rate_librosa`: librosa's onset detector, onsets per second.
- `essentia_key`: essentia's `KeyExtractor` ("edma" profile) at 44.1 kHz: key, scale, strength.
- `essentia_onset_rate`: essentia's `OnsetRate` (it needs 44.1 kHz), onsets per second.

essentia is optional (`pip install essentia`); without it `listen(..., essentia=True)` is a
one-line error.
"""
from __future__ import annotations

import numpy as np

from melfusion.errors import MelFusionError
from melfusion.music.keys import pitch_class

# Krumhansl and Kessler's probe-tone profiles, tonic first.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
KEYS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
ESSENTIA_RATE = 44100


def _corr_all_keys(chroma: np.ndarray, profile: np.ndarray) -> np.ndarray:
    """Correlation of a 12-bin chroma with the profile rotated to each of the 12 tonics."""
    rotations = np.stack([np.roll(profile, k) for k in range(12)])
    c = chroma - chroma.mean()
    r = rotations - rotations.mean(axis=1, keepdims=True)
    return (r @ c) / (np.linalg.norm(r, axis=1) * np.linalg.norm(c) + 1e-12)


def key_profile_score(wave: np.ndarray, sr: int) -> float:
    """Best major-key correlation minus best minor-key correlation of the clip's mean chroma."""
    import librosa

    y = np.asarray(wave, dtype=np.float32)
    if not np.any(np.abs(y) > 1e-6):
        return 0.0
    chroma = librosa.feature.chroma_stft(y=y, sr=sr, n_fft=4096).mean(axis=1)
    return float(_corr_all_keys(chroma, MAJOR_PROFILE).max() - _corr_all_keys(chroma, MINOR_PROFILE).max())


def onset_rate_librosa(wave: np.ndarray, sr: int) -> float:
    import librosa

    y = np.asarray(wave, dtype=np.float32)
    return float(len(librosa.onset.onset_detect(y=y, sr=sr, units="time")) / (len(y) / sr))


def _at_44k(wave: np.ndarray, sr: int) -> np.ndarray:
    import librosa

    y = np.asarray(wave, dtype=np.float32)
    return y if sr == ESSENTIA_RATE else librosa.resample(y, orig_sr=sr, target_sr=ESSENTIA_RATE).astype(np.float32)


def _essentia():
    try:
        import essentia
        import essentia.standard as es
    except ImportError:
        raise MelFusionError("the essentia listener needs the essentia package (pip install essentia)") from None
    essentia.log.infoActive = False
    essentia.log.warningActive = False
    return es


def essentia_key(wave: np.ndarray, sr: int) -> tuple[str, str, float]:
    es = _essentia()
    key, scale, strength = es.KeyExtractor(profileType="edma", sampleRate=ESSENTIA_RATE)(_at_44k(wave, sr))
    return str(key), str(scale), float(strength)


def essentia_onset_rate(wave: np.ndarray, sr: int) -> float:
    es = _essentia()
    _, rate = es.OnsetRate()(_at_44k(wave, sr))
    return float(rate)


def listen(wave: np.ndarray, sr: int, essentia: bool = True) -> dict:
    """Everything the listeners say about one clip."""
    out = {"key_profile_score": key_profile_score(wave, sr), "onset_rate_librosa": onset_rate_librosa(wave, sr)}
    if essentia:
        key, scale, strength = essentia_key(wave, sr)
        out.update(essentia_key=key, essentia_scale=scale, essentia_strength=strength,
                   essentia_onset_rate=essentia_onset_rate(wave, sr))
    return out


def listen_folder(folder, names: list[str]) -> dict[str, dict]:
    """`listen` on `folder/<name>.wav` for each name, cached in `folder/listen.json` (a clip's
    reading is saved as soon as it is made, so an interrupted run keeps what it heard)."""
    import json
    from pathlib import Path

    import soundfile as sf

    folder = Path(folder)
    cache = folder / "listen.json"
    seen = json.loads(cache.read_text()) if cache.is_file() else {}
    for name in names:
        if name not in seen:
            y, sr = sf.read(str(folder / f"{name}.wav"), dtype="float32")
            seen[name] = listen(y, sr)
            cache.write_text(json.dumps(seen, indent=1))
    return {name: seen[name] for name in names}


def following(rows: list[dict]) -> dict:
    """How far the music follows the pictures, from `listen` results with the picture's labels.

    Each row holds `warm` and `busy` (bools) beside the listener's fields. Returns the share of
    clips whose essentia scale is the picture's (warm: major, cool: minor), the key-profile
    major-minor gap (mean score of warm pictures' music minus cool ones'), and the onset-rate
    gaps (busy minus calm) of both onset detectors; NaN where a side is empty. Rows that also
    hold the record's `key` ("Ab minor") add `tonic_follows` (essentia's tonic is the record's)
    and `key_follows` (tonic and scale both), which only a caption stating the key can ask for;
    rows with the record's `bpm` add `onset_bpm_correlation` (librosa onset rate against tempo).
    """
    def mean(xs):
        return float(np.mean(xs)) if len(xs) else float("nan")

    warm = [r for r in rows if r["warm"]]
    cool = [r for r in rows if not r["warm"]]
    busy = [r for r in rows if r["busy"]]
    calm = [r for r in rows if not r["busy"]]
    out = {"clips": len(rows),
           "key_profile_gap": mean([r["key_profile_score"] for r in warm]) - mean([r["key_profile_score"] for r in cool]),
           "onset_gap_librosa": mean([r["onset_rate_librosa"] for r in busy]) - mean([r["onset_rate_librosa"] for r in calm])}
    timed = [r for r in rows if r.get("bpm")]
    if len(timed) >= 3:
        out["onset_bpm_correlation"] = float(np.corrcoef([r["onset_rate_librosa"] for r in timed],
                                                         [r["bpm"] for r in timed])[0, 1])
    if rows and "essentia_scale" in rows[0]:
        out["scale_follows"] = mean([r["essentia_scale"] == ("major" if r["warm"] else "minor") for r in rows])
        out["onset_gap_essentia"] = (mean([r["essentia_onset_rate"] for r in busy])
                                     - mean([r["essentia_onset_rate"] for r in calm]))
        keyed = [r for r in rows if r.get("key")]
        if keyed:
            tonic = [pitch_class(r["essentia_key"]) == pitch_class(r["key"].split()[0]) for r in keyed]
            out["tonic_follows"] = mean(tonic)
            out["key_follows"] = mean([t and r["essentia_scale"] == r["key"].split()[-1] for t, r in zip(tonic, keyed)])
    return out
