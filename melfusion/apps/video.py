"""The shareable video: the still image with the music, H.264 + AAC in an MP4 that social sites take.

ffmpeg comes from the `imageio-ffmpeg` wheel, so nothing has to be installed system-wide."""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from melfusion.audio.io import write_wav
from melfusion.errors import MelFusionError

MAX_SIDE = 1080  # the longest side of the video frame; larger images are scaled down
FPS = 10         # a still picture needs few frames; players and upload sites accept 10 fps


def ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise MelFusionError("making a video needs the imageio-ffmpeg package (pip install imageio-ffmpeg)") from None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as exc:
        raise MelFusionError(f"no ffmpeg available: {exc}") from None


def _frame(image: Image.Image) -> Image.Image:
    """RGB, longest side at most MAX_SIDE, both sides even (H.264 with yuv420p needs that)."""
    img = image.convert("RGB")
    scale = min(1.0, MAX_SIDE / max(img.size))
    w, h = (max(2, int(round(s * scale)) // 2 * 2) for s in img.size)
    return img.resize((w, h), Image.Resampling.LANCZOS) if (w, h) != img.size else img


def make_video(path: str | os.PathLike, image: Image.Image, audio: np.ndarray, sample_rate: int) -> Path:
    """Write `path` (.mp4): `image` shown for the length of `audio` (mono float). Atomic: on any
    failure no file is left at `path`."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise MelFusionError(f"the video must be an .mp4 file, got {path}")
    if path.is_dir():
        raise MelFusionError(f"the video path is a directory: {path}")
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if audio.size == 0:
        raise MelFusionError("no audio to put in the video")
    duration = audio.size / sample_rate
    exe = ffmpeg_exe()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".melfusion-video-", dir=path.parent) as work:
        work = Path(work)
        _frame(image).save(work / "frame.png")
        write_wav(work / "audio.wav", audio, sample_rate)
        tmp_out = work / "out.mp4"
        cmd = [exe, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
               "-loop", "1", "-framerate", str(FPS), "-i", str(work / "frame.png"),
               "-i", str(work / "audio.wav"),
               "-map", "0:v:0", "-map", "1:a:0",
               "-c:v", "libx264", "-preset", "veryfast", "-tune", "stillimage", "-pix_fmt", "yuv420p",
               "-c:a", "aac", "-b:a", "160k", "-ar", "44100",
               "-t", f"{duration:.3f}", "-movflags", "+faststart", str(tmp_out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not tmp_out.is_file():
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise MelFusionError(f"ffmpeg could not write the video: {last}")
        os.replace(tmp_out, path)
    return path


def media_info(path: str | os.PathLike) -> dict:
    """Duration (s) and codec names of a media file, read from ffmpeg's description of it."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True, text=True)
    text = proc.stderr
    m = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", text)
    if not m:
        raise MelFusionError(f"not a readable media file: {path}")
    h, mnt, s = m.groups()
    video = re.search(r"Stream #\S+.*?Video: (\w+)", text)
    audio = re.search(r"Stream #\S+.*?Audio: (\w+)", text)
    return {"duration": int(h) * 3600 + int(mnt) * 60 + float(s),
            "video_codec": video.group(1) if video else None, "audio_codec": audio.group(1) if audio else None}
