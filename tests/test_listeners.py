"""The independent listeners hear mode and pace in music they are handed, and `following`
turns their readings into issue 12's picture-following figures."""
import numpy as np
import pytest

from melfusion.errors import MelFusionError
from melfusion.metrics.listeners import following, key_profile_score, listen, onset_rate_librosa

SR = 16000


def _tone(freqs, seconds, sr=SR):
    t = np.arange(int(seconds * sr)) / sr
    env = np.exp(-3 * (t % seconds))
    return sum(np.sin(2 * np.pi * f * t) * env for f in freqs)


def _progression(minor: bool, seconds_per_chord=1.0):
    """i-iv-v-i in C, major (C E G / F A C / G B D) or natural minor (C Eb G / F Ab C / G Bb D),
    each chord with its bass an octave down and its root an octave up."""
    c, d, eb, e, f, g, ab, a, bb, b = 261.63, 293.66, 311.13, 329.63, 349.23, 392.0, 415.30, 440.0, 466.16, 493.88
    chords = ([(c, eb, g), (f, ab, 2 * c), (g, bb, 2 * d), (c, eb, g)] if minor
              else [(c, e, g), (f, a, 2 * c), (g, b, 2 * d), (c, e, g)])
    parts = [_tone([ch[0] / 2, *ch, 2 * ch[0]], seconds_per_chord) for ch in chords * 2]
    y = np.concatenate(parts)
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


def _clicks(rate, seconds=8.0, sr=SR):
    y = np.zeros(int(seconds * sr), dtype=np.float32)
    burst = (np.random.default_rng(0).standard_normal(400) * np.exp(-np.arange(400) / 60)).astype(np.float32)
    for k in range(int(seconds * rate)):
        s = int(k * sr / rate)
        y[s:s + 400] += 0.5 * burst[: len(y) - s]
    return y


def test_key_profiles_tell_a_major_progression_from_its_minor_twin():
    major, minor = key_profile_score(_progression(False), SR), key_profile_score(_progression(True), SR)
    assert major > 0 > minor
    assert major - minor > 0.2
    assert key_profile_score(np.zeros(SR, dtype=np.float32), SR) == 0.0


def test_onset_rates_follow_the_pace():
    slow, fast = onset_rate_librosa(_clicks(1.5), SR), onset_rate_librosa(_clicks(6.0), SR)
    assert 1.0 < slow < 3.0 and fast > 2.5 * slow


def test_essentia_reads_scale_and_pace():
    pytest.importorskip("essentia")
    major, minor = listen(_progression(False), SR), listen(_progression(True), SR)
    assert major["essentia_scale"] == "major" and minor["essentia_scale"] == "minor"
    assert major["essentia_key"] == minor["essentia_key"] == "C"
    slow, fast = listen(_clicks(1.5), SR)["essentia_onset_rate"], listen(_clicks(6.0), SR)["essentia_onset_rate"]
    assert slow < 2.5 < 4.5 < fast


def test_following_counts_scale_matches_and_gaps():
    rows = [dict(warm=True, busy=True, key_profile_score=0.3, onset_rate_librosa=6.0, essentia_scale="major",
                 essentia_onset_rate=5.0),
            dict(warm=True, busy=False, key_profile_score=0.1, onset_rate_librosa=2.0, essentia_scale="minor",
                 essentia_onset_rate=2.0),
            dict(warm=False, busy=True, key_profile_score=-0.2, onset_rate_librosa=5.0, essentia_scale="minor",
                 essentia_onset_rate=4.0),
            dict(warm=False, busy=False, key_profile_score=0.0, onset_rate_librosa=3.0, essentia_scale="minor",
                 essentia_onset_rate=1.0)]
    f = following(rows)
    assert f["clips"] == 4 and f["scale_follows"] == pytest.approx(0.75)
    assert f["key_profile_gap"] == pytest.approx(0.2 - (-0.1))
    assert f["onset_gap_librosa"] == pytest.approx(5.5 - 2.5)
    assert f["onset_gap_essentia"] == pytest.approx(4.5 - 1.5)


def test_listen_folder_reads_each_clip_once_and_keeps_its_readings(tmp_path):
    import soundfile as sf

    from melfusion.metrics.listeners import listen_folder

    sf.write(str(tmp_path / "a.wav"), _progression(False), SR)
    sf.write(str(tmp_path / "b.wav"), _clicks(6.0), SR)
    first = listen_folder(tmp_path, ["a", "b"])
    assert first["a"]["key_profile_score"] > 0 and first["b"]["onset_rate_librosa"] > 3
    (tmp_path / "a.wav").unlink()  # read from the cache now
    assert listen_folder(tmp_path, ["a"])["a"] == first["a"]


def test_pitch_class_reads_sharps_and_flats_alike():
    from melfusion.music.keys import pitch_class

    assert [pitch_class(n) for n in ("C", "C#", "Db", "Eb", "F#", "Gb", "Ab", "Bb", "B")] == [0, 1, 1, 3, 6, 6, 8, 10, 11]
    with pytest.raises(MelFusionError):
        pitch_class("H")


def test_following_counts_tonic_and_key_matches_when_rows_carry_the_key():
    base = dict(warm=True, busy=True, key_profile_score=0.0, onset_rate_librosa=1.0, essentia_onset_rate=1.0)
    rows = [dict(base, key="Eb major", essentia_key="Eb", essentia_scale="major"),   # tonic and key
            dict(base, key="F# minor", essentia_key="F#", essentia_scale="major"),   # tonic only
            dict(base, key="Ab minor", essentia_key="G#", essentia_scale="minor"),   # same tonic, other name
            dict(base, key="C major", essentia_key="A", essentia_scale="minor")]     # relative key: neither
    f = following(rows)
    assert f["tonic_follows"] == pytest.approx(0.75) and f["key_follows"] == pytest.approx(0.5)
    assert "tonic_follows" not in following([dict(base, essentia_key="C", essentia_scale="major")])


def test_following_correlates_onset_rate_with_the_records_tempo():
    base = dict(warm=True, busy=True, key_profile_score=0.0)
    rows = [dict(base, bpm=b, onset_rate_librosa=o) for b, o in ((80, 2.0), (100, 3.0), (120, 4.5), (140, 5.0))]
    assert following(rows)["onset_bpm_correlation"] > 0.95
    rows = [dict(r, onset_rate_librosa=7.0 - r["onset_rate_librosa"]) for r in rows]
    assert following(rows)["onset_bpm_correlation"] < -0.95
    assert "onset_bpm_correlation" not in following(rows[:2])
