"""Pieces longer than the model's window: composed window by window, each window's overlap with
the one before held fixed, the joins no louder (spectrally) than the piece is elsewhere.

The tiny model's window is set to 1 s here (`defaults["window_s"]`), so a 2.5 s piece is four
windows and every test stays fast."""
import numpy as np
import pytest
import soundfile as sf
import torch

from melfusion.cli import main
from melfusion.errors import MelFusionError
from melfusion.long import Held, join_report, level_after, level_at_start, plan_windows, tail_frames
from melfusion.pipeline import MAX_LONG_DURATION_S, check_duration
from melfusion.schedulers import make_scheduler

from test_cli import EXAMPLE


@pytest.fixture
def windowed(tiny_pipe, monkeypatch):
    monkeypatch.setitem(tiny_pipe.defaults, "window_s", 1.0)
    return tiny_pipe


def _run(pipe, image, seed=0, **kw):
    kw.setdefault("duration_s", 2.5)
    kw.setdefault("num_inference_steps", 2)
    return pipe(image=image, prompt="a folk song with fiddle", generator=torch.Generator().manual_seed(seed),
                progress=False, **kw)


def test_windows_cover_the_piece_at_the_models_length():
    for total, window, overlap, tail in [(64, 28, 8, 7), (100, 28, 8, 0), (29, 28, 8, 7), (750, 252, 76, 6),
                                         (48, 28, 20, 7), (3000, 252, 76, 6)]:
        spans = plan_windows(total, window, overlap, tail)
        assert spans[0][0] == 0 and spans[-1][1] == total
        assert all(e - s == window for s, e in spans)
        for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
            # each holds at least the overlap before the last one's ending, and composes new frames
            assert overlap <= (e0 - tail) - s1 < window and e1 > e0 and s1 > s0
    assert plan_windows(20, 28, 8) == [(0, 20)]
    assert len(plan_windows(3000, 252, 76, 6)) == 18  # 120 s of the shipped model: 18 windows of 10 s
    with pytest.raises(ValueError):
        plan_windows(64, 28, 21, 7)  # nothing new left in a window


def test_the_tail_is_the_padding_and_the_training_clips_ending():
    # 10 s at 100 frames/s: 1008 frames (8 of padding) + 15 frames of ending -> 23 -> 6 latent frames
    assert tail_frames(1008, 10.0, 100.0, 4) == 6
    assert tail_frames(1008, 10.0, 100.0, 4, tail_s=0.0) == 2


@pytest.mark.parametrize("solver", ["ddim", "dpm++2m", "unipc"])
@pytest.mark.parametrize("lean", [True, False])
def test_the_held_level_is_the_level_each_solver_steps_to(tiny_pipe, solver, lean):
    """With the exact model output for a known clean latent, every solver's step lands on the
    clean latent noised to `level_after` (so the held part is replaced at the sampler's own level)."""
    cfg = tiny_pipe.music.scheduler_config
    sched = make_scheduler(solver, cfg, lean=lean)
    sched.set_timesteps(6)
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(1, 8, 12, 16, generator=gen), torch.randn(1, 8, 12, 16, generator=gen)
    held = Held(x0, eps)
    ac = sched.alphas_cumprod
    x = held.apply(torch.zeros_like(x0), level_at_start(sched))
    for i, t in enumerate(sched.timesteps):
        a = float(ac[int(t)])
        v = a ** 0.5 * eps - (1 - a) ** 0.5 * x0  # v-prediction, the music model's
        assert cfg["prediction_type"] == "v_prediction"
        x = sched.step(v, t, x).prev_sample
        level = level_after(sched, i)
        if i == len(sched.timesteps) - 1:
            # The end is the clean latent (held exactly); DDIM's own last step stops at
            # alphas_cumprod[0] when set_alpha_to_one is off, a hair from clean.
            assert level is None
            level = float(getattr(sched, "final_alpha_cumprod", 1.0))
        expected = held.apply(torch.zeros_like(x0), level)
        assert (x - expected).abs().max() < 2e-4, (i, int(t))


def test_a_long_piece_has_the_asked_length_in_windows_of_the_models(windowed, example_image):
    out = _run(windowed, example_image)
    assert out.audio.shape == (int(2.5 * 16000),) and np.isfinite(out.audio).all()
    assert out.log_mel.shape == (1, windowed.frames_for(2.5), 64)
    window, f = windowed.frames_for(1.0), windowed.audio_vae.factor
    tail = tail_frames(window, 1.0, 100.0, f)
    assert out.windows == [(s * f, e * f) for s, e in plan_windows(windowed.frames_for(2.5) // f, window // f,
                                                                    round(0.3 * window / f), tail)]
    assert len(out.windows) == 4 and all(e - s == window for s, e in out.windows)
    assert out.windows[-1][1] == windowed.frames_for(2.5)
    assert out.joins == [e - tail * f for _, e in out.windows[:-1]]  # each window's ending composed anew
    assert set(out.timings) == {"text", "inversion", "denoising", "vocoding"}


@pytest.mark.parametrize("solver", ["ddim", "dpm++2m", "unipc"])
def test_each_window_holds_its_overlap_with_the_one_before(windowed, example_image, solver):
    out = _run(windowed, example_image, solver=solver, num_inference_steps=3)
    f = windowed.audio_vae.factor
    for k in range(1, len(out.windows)):
        (s0, _), (s1, _), join = out.windows[k - 1], out.windows[k], out.joins[k - 1]
        held = (join - s1) // f
        before = out.window_latents[k - 1][:, :, (s1 - s0) // f: (join - s0) // f]
        assert held >= 8 and torch.equal(out.window_latents[k][:, :, :held], before)
        # and the rest is new music (the window before's ending included), not a copy
        assert (out.window_latents[k][:, :, held:held + 4] - out.window_latents[k - 1][:, :, -4:]).abs().mean() > 1e-3


def test_the_joins_change_no_more_than_the_piece_does_away_from_them(windowed, example_image):
    out = _run(windowed, example_image, duration_s=4.0)
    report = join_report(out.log_mel, out.joins)
    assert len(report.at_joins) == len(out.windows) - 1 >= 3
    assert report.within_range, report.summary()
    # The measure does see a seam: a log-mel that jumps at a frame is flagged there.
    mel = out.log_mel[0].clone()
    mel[200:] += 3.0
    seam = join_report(mel, [200])
    assert not seam.within_range and seam.ranks == [1.0]


def test_a_long_piece_is_the_same_for_a_seed_and_another_for_another(windowed, example_image):
    a, b, c = (_run(windowed, example_image, seed=s).audio for s in (3, 3, 4))
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_up_to_the_window_one_pass_as_before(tiny_pipe, example_image, monkeypatch):
    """A piece no longer than the window never takes the window path: the same audio whatever the window."""
    base = _run(tiny_pipe, example_image, duration_s=1.0)
    assert base.windows == [] and base.window_latents == []
    monkeypatch.setitem(tiny_pipe.defaults, "window_s", 1.0)
    same = _run(tiny_pipe, example_image, duration_s=1.0)
    assert same.windows == [] and np.array_equal(base.audio, same.audio)
    assert tiny_pipe.window_s == 1.0
    monkeypatch.delitem(tiny_pipe.defaults, "window_s")
    assert tiny_pipe.window_s == tiny_pipe.defaults["duration_s"]  # the trained clip length


def test_the_progress_bar_counts_windows_and_steps(windowed, example_image, monkeypatch):
    bars = []

    class Bar:
        def __init__(self, total=None, desc="", **kw):
            self.total, self.n, self.descs = total, 0, [desc]
            bars.append(self)

        def update(self, n=1):
            self.n += n

        def set_description(self, desc):
            self.descs.append(desc)

        def close(self):
            pass

    monkeypatch.setattr("melfusion.pipeline.tqdm", Bar)
    windowed(image=example_image, prompt="jazz", duration_s=2.5, num_inference_steps=2,
             generator=torch.Generator().manual_seed(0), progress=True)
    bar = bars[-1]
    assert bar.total == 4 * 2 and bar.n == 8
    assert "composing window 4/4" in bar.descs


def test_without_the_picture_a_long_piece_too(windowed, example_image):
    out = _run(windowed, None)
    assert out.audio.shape == (int(2.5 * 16000),) and len(out.windows) == 4
    assert np.abs(out.audio - _run(windowed, example_image).audio).max() > 1e-3


def test_durations_over_the_limit_are_refused_in_one_line(windowed, example_image, tmp_path, capsys):
    assert check_duration(MAX_LONG_DURATION_S) == 120.0
    for bad in (120.5, 1e9, float("inf"), 0.5):
        with pytest.raises(MelFusionError, match="between 1 and 120 seconds") as info:
            _run(windowed, example_image, duration_s=bad)
        assert "\n" not in str(info.value)
    code = main(["generate", "--image", str(EXAMPLE), "--text", "jazz", "--out", str(tmp_path / "a.wav"),
                 "--model", "tiny", "--duration", "121", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: duration must be between 1 and 120") and "\n" not in err
    assert not list(tmp_path.iterdir())


def test_generate_writes_a_piece_longer_than_the_window(tmp_path, capsys):
    """The tiny preset's window is its 2 s default duration: 3 s is two windows."""
    code = main(["generate", "--image", str(EXAMPLE), "--text", "folk guitar", "--out", str(tmp_path / "long.wav"),
                 "--model", "tiny", "--steps", "2", "--duration", "3"])
    assert code == 0
    wave, rate = sf.read(str(tmp_path / "long.wav"))
    assert rate == 16000 and wave.shape == (48000,)
    assert "2 windows" in capsys.readouterr().err
