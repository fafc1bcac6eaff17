"""The shareable video and the spectrogram picture: H.264 + AAC of the audio's length, written
atomically; a picture whose brightness follows the loudness; clean refusals."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from melfusion.apps.spectrogram import colour_map, save_spectrogram, spectrogram_image
from melfusion.apps.video import make_video, media_info
from melfusion.cli import main
from melfusion.errors import MelFusionError

EXAMPLE = Path(__file__).parents[1] / "examples" / "beach-post.png"


def test_video_is_h264_aac_with_the_audios_duration(tmp_path):
    rate = 16000
    audio = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(2.5 * rate)) / rate)).astype(np.float32)
    img = Image.new("RGB", (333, 201), (200, 120, 40))  # odd sides: must be made even for H.264
    out = make_video(tmp_path / "clip.mp4", img, audio, rate)
    info = media_info(out)
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert info["duration"] == pytest.approx(2.5, abs=0.1)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # no temporary files left


def test_video_refuses_bad_paths_and_leaves_nothing(tmp_path):
    audio = np.zeros(1600, np.float32)
    img = Image.new("RGB", (64, 64))
    with pytest.raises(MelFusionError, match=".mp4"):
        make_video(tmp_path / "clip.avi", img, audio, 16000)
    with pytest.raises(MelFusionError, match="no audio"):
        make_video(tmp_path / "clip.mp4", img, np.zeros(0, np.float32), 16000)
    assert list(tmp_path.iterdir()) == []


def test_colour_map_runs_dark_to_bright():
    rgb = colour_map(np.linspace(0, 1, 11)).astype(int)
    brightness = rgb.sum(axis=1)
    assert rgb.shape == (11, 3) and brightness[0] < 20 and brightness[-1] > 650
    assert np.all(np.diff(brightness) > 0)


def test_spectrogram_puts_low_frequencies_at_the_bottom_and_loud_bins_bright(tmp_path):
    mel = np.full((100, 64), -10.0, dtype=np.float32)
    mel[:, :8] = 2.0  # loud low mel bins
    img = np.asarray(spectrogram_image(mel, width=200, height=128)).astype(int).sum(axis=2)
    assert img[-5:].mean() > 500 and img[:100].mean() < 50
    path = save_spectrogram(tmp_path / "s.png", mel[None])
    assert Image.open(path).size == (800, 256)
    with pytest.raises(MelFusionError):
        save_spectrogram(tmp_path / "s.jpg", mel)
    with pytest.raises(MelFusionError):
        spectrogram_image(np.zeros((2, 10, 64)))


def test_generate_writes_wav_video_and_spectrogram(tmp_path):
    argv = ["generate", "--image", str(EXAMPLE), "--text", "folk guitar by the sea", "--out", str(tmp_path / "a.wav"),
            "--model", "tiny", "--steps", "2", "--duration", "1.5", "--quiet",
            "--video", str(tmp_path / "a.mp4"), "--spectrogram", str(tmp_path / "a.png")]
    assert main(argv) == 0
    wave, rate = sf.read(str(tmp_path / "a.wav"))
    info = media_info(tmp_path / "a.mp4")
    assert info["duration"] == pytest.approx(len(wave) / rate, abs=0.1)
    assert Image.open(tmp_path / "a.png").format == "PNG"


def test_generate_refuses_bad_video_and_picture_names_before_writing(tmp_path, capsys):
    base = ["generate", "--image", str(EXAMPLE), "--text", "calm", "--out", str(tmp_path / "a.wav"),
            "--model", "tiny", "--steps", "1", "--duration", "1", "--quiet"]
    assert main(base + ["--video", str(tmp_path / "a.mov")]) == 2
    assert main(base + ["--spectrogram", str(tmp_path / "a.jpg")]) == 2
    err = capsys.readouterr().err
    assert "--video must name an .mp4" in err and "--spectrogram must name a .png" in err
    assert list(tmp_path.iterdir()) == []
