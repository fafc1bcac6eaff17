"""Mastering: the stated integrated loudness (measured with pyloudnorm), a fade to zero at the
end, peaks under the ceiling, silence left silent; through the pipeline and the command line."""
import warnings

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
import torch

from melfusion.audio.loudness import (CEILING_DBFS, DEFAULT_LOUDNESS_LUFS, check_loudness, fade_out,
                                      integrated_loudness, limit, master, true_peak)
from melfusion.cli import main
from melfusion.errors import MelFusionError

from test_cli import EXAMPLE

SR = 16000
CEILING = 10 ** (CEILING_DBFS / 20)


def _lufs(wave):
    return pyloudnorm.Meter(SR).integrated_loudness(np.asarray(wave, dtype=np.float64))


def _signals():
    rng = np.random.default_rng(0)
    t = np.arange(3 * SR) / SR
    return {
        "quiet noise": rng.normal(0, 0.01, 3 * SR),
        "loud noise": np.clip(rng.normal(0, 0.8, 3 * SR), -1, 1),
        "sine": 0.05 * np.sin(2 * np.pi * 440 * t),
        "a swell": np.sin(2 * np.pi * 220 * t) * np.linspace(0.001, 0.9, 3 * SR),
    }


@pytest.mark.parametrize("name", list(_signals()))
@pytest.mark.parametrize("target", [DEFAULT_LOUDNESS_LUFS, -23.0])
def test_synthetic_audio_lands_on_the_target_under_the_ceiling(name, target):
    out = master(_signals()[name], SR, target)
    assert out.dtype == np.float32 and out.shape == (3 * SR,)
    assert abs(_lufs(out) - target) < 0.5
    assert true_peak(out) <= CEILING * 1.0001


def test_a_tiny_model_piece_is_mastered_to_the_target(tiny_pipe, example_image):
    raw = tiny_pipe(image=example_image, prompt="calm piano", duration_s=2.0, num_inference_steps=2,
                    generator=torch.Generator().manual_seed(0), progress=False)
    out = tiny_pipe(image=example_image, prompt="calm piano", duration_s=2.0, num_inference_steps=2,
                    generator=torch.Generator().manual_seed(0), progress=False, loudness_lufs=-14)
    assert abs(_lufs(out.audio) - (-14.0)) < 0.5
    assert true_peak(out.audio) <= CEILING * 1.0001
    assert out.audio[-1] == 0.0 and "mastering" in out.timings
    # by default the pipeline gives the model's own output (what evaluation scores)
    assert np.abs(raw.audio).max() == pytest.approx(0.9) and "mastering" not in raw.timings


def test_the_fade_brings_the_last_samples_to_zero():
    wave = np.full(SR, 0.5)
    faded = fade_out(wave, SR, 50)
    assert faded[-1] == 0.0 and np.abs(faded[-16:]).max() < 1e-3 * 0.5
    assert np.array_equal(faded[: SR - 800], wave[: SR - 800])           # only the last 50 ms
    assert np.all(np.diff(faded[-800:]) <= 0)                             # a smooth fall, no bump
    out = master(np.random.default_rng(1).normal(0, 0.1, 2 * SR), SR)
    assert out[-1] == 0.0 and np.abs(out[-16:]).max() < 1e-3


def test_silence_stays_silence():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division or log warnings either
        assert integrated_loudness(np.zeros(2 * SR), SR) == -np.inf
        out = master(np.zeros(2 * SR), SR)
        assert np.array_equal(out, np.zeros(2 * SR, np.float32))
        whisper = np.random.default_rng(2).normal(0, 1e-6, 2 * SR)      # under the -70 LUFS gate
        out = master(whisper, SR)
        assert np.isfinite(out).all() and np.abs(out).max() < 1e-5
        assert master(np.zeros(100), SR).shape == (100,)                  # shorter than a 400 ms block


def test_peaks_are_limited_without_touching_the_rest():
    rng = np.random.default_rng(3)
    wave = rng.normal(0, 0.05, 2 * SR)
    wave[SR] = 3.0                                                        # one click, far over
    out = limit(wave, SR)
    assert true_peak(out) <= CEILING * 1.0001
    far = np.r_[0:SR - 2000, SR + 2000:2 * SR]
    assert np.array_equal(out[far], wave[far])                            # the gain moved near the click only


def test_a_batch_is_mastered_piece_by_piece():
    rng = np.random.default_rng(4)
    batch = np.stack([rng.normal(0, 0.01, 2 * SR), rng.normal(0, 0.3, 2 * SR)])
    out = master(batch, SR, -18)
    assert out.shape == batch.shape
    assert all(abs(_lufs(row) + 18) < 0.5 for row in out)


def test_loudness_outside_the_range_is_refused(tiny_pipe, example_image):
    assert check_loudness(-14) == -14.0
    for bad in (0, -3, -80, float("nan"), True, "loud"):
        with pytest.raises(MelFusionError, match="loudness must be between"):
            check_loudness(bad)
    with pytest.raises(MelFusionError, match="loudness"):
        tiny_pipe(image=example_image, prompt="jazz", duration_s=1.0, progress=False, loudness_lufs=0)


def _generate(tmp_path, *extra, out="song.wav"):
    return main(["generate", "--image", str(EXAMPLE), "--text", "folk guitar by the sea", "--out",
                 str(tmp_path / out), "--model", "tiny", "--steps", "2", "--duration", "1.5", "--quiet", *extra])


def test_generate_masters_to_minus_14_by_default_and_as_asked(tmp_path):
    assert _generate(tmp_path) == 0
    wave, rate = sf.read(str(tmp_path / "song.wav"))
    assert rate == SR and abs(_lufs(wave) + 14) < 0.5 and np.abs(wave[-8:]).max() < 1e-3
    assert _generate(tmp_path, "--loudness", "-20", out="quiet.wav") == 0
    assert abs(_lufs(sf.read(str(tmp_path / "quiet.wav"))[0]) + 20) < 0.5
    assert _generate(tmp_path, "--loudness", "off", out="raw.wav") == 0
    assert np.abs(sf.read(str(tmp_path / "raw.wav"))[0]).max() == pytest.approx(0.9, abs=1e-4)


@pytest.mark.parametrize("value", ["0", "-100", "loud", "nan"])
def test_generate_refuses_a_bad_loudness_in_one_line(tmp_path, capsys, value):
    assert _generate(tmp_path, f"--loudness={value}") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "loudness" in err
    assert "\n" not in err and not list(tmp_path.iterdir())


def test_the_meter_is_bs1770s():
    """The K-weighting at 48 kHz is the standard's published biquads; a full-scale 997 Hz sine reads
    -3.01 LUFS (the standard's reference); pyloudnorm, whose filters approximate the standard's,
    agrees within 0.2 LU on music-like signals at 16 kHz; a 6 dB quieter copy reads 6 LU lower."""
    from melfusion.audio.loudness import _k_weighting, integrated_loudness

    (b1, a1), (b2, a2) = _k_weighting(48000)
    assert np.allclose(b1, [1.53512485958697, -2.69169618940638, 1.19839281085285], atol=1e-9)
    assert np.allclose(a1, [1.0, -1.69065929318241, 0.73248077421585], atol=1e-9)
    assert np.allclose(b2, [1.0, -2.0, 1.0]) and np.allclose(a2, [1.0, -1.99004745483398, 0.99007225036621], atol=1e-9)
    t48 = np.arange(48000 * 5) / 48000
    assert integrated_loudness(np.sin(2 * np.pi * 997 * t48), 48000) == pytest.approx(-3.01, abs=0.01)
    rng = np.random.default_rng(0)
    t = np.arange(SR * 6) / SR
    for wave in (rng.normal(0, 0.1, len(t)), 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(t)),
                 np.concatenate([rng.normal(0, 0.001, SR * 2), rng.normal(0, 0.3, SR * 4)])):
        ours = integrated_loudness(wave, SR)
        assert abs(ours - _lufs(wave)) < 0.2
        assert integrated_loudness(wave / 2, SR) == pytest.approx(ours - 20 * np.log10(2), abs=1e-6)


def test_mastering_imports_no_scipy_signal():
    import subprocess
    import sys

    code = ("import sys, numpy as np; from melfusion.audio.loudness import master; "
            "master(np.random.default_rng(0).normal(0, .1, 32000), 16000); "
            "print(sorted(m for m in sys.modules if m.startswith(('scipy.signal', 'scipy.ndimage', 'pyloudnorm'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
