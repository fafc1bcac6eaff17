"""The web demo without a browser: the request handler's checks and results, loopback by
default, and a server that refuses to hand out files a request names."""
import socket
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from melfusion.apps.demo import Composer
from melfusion.apps.video import media_info
from melfusion.cli import build_parser
from melfusion.errors import MelFusionError

EXAMPLE = Path(__file__).parents[1] / "examples" / "beach-post.png"


def test_servers_bind_to_loopback_by_default():
    parser = build_parser()
    assert parser.parse_args(["serve"]).host == "127.0.0.1"
    assert parser.parse_args(["study", "serve", "somewhere"]).host == "127.0.0.1"


def test_composer_writes_wav_spectrogram_and_video_of_one_length(tiny_pipe, tmp_path):
    c = Composer(tiny_pipe, out_root=tmp_path)
    audio, png, wav, mp4, status = c(str(EXAMPLE), "  calm   piano ", 1.5, 3, 2, 3.0)
    wave, rate = sf.read(wav)
    assert audio == wav and len(wave) == int(1.5 * rate)
    assert media_info(mp4)["duration"] == pytest.approx(1.5, abs=0.1)
    assert Image.open(png).format == "PNG" and "1.5 s" in status


def test_composer_refuses_bad_input_with_a_message(tiny_pipe, tmp_path):
    c = Composer(tiny_pipe, max_upload_mb=0.01, out_root=tmp_path / "out")
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 100, 3), dtype=np.uint8)).save(big)
    cases = [((str(EXAMPLE), "   "), "caption is empty"), ((None, "piano"), "upload an image"),
             ((str(notes), "piano"), "not a readable image: the uploaded file"), ((str(big), "piano"), "too large")]
    for (image, caption), message in cases:
        with pytest.raises(MelFusionError, match=message):
            c(image, caption, 1.0, 0, 1, 1.0)
    assert not list((tmp_path / "out").iterdir())


def test_demo_server_serves_no_file_a_request_names(tiny_pipe, tmp_path):
    from melfusion.apps.demo import build_demo, launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(build_demo(tiny_pipe), "127.0.0.1", port, block=False)
    try:
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(base + "/", timeout=30) as resp:
            assert resp.status == 200
        secret = tmp_path / "secret.txt"
        secret.write_text("top secret")
        for path in [f"/gradio_api/file={secret}", "/gradio_api/file=/etc/passwd",
                     f"/gradio_api/file={Path(__file__).resolve()}", "/gradio_api/file=/tmp/gradio/../../etc/passwd",
                     "/static/../../../etc/passwd", "/assets/..%2f..%2f..%2fetc%2fpasswd"]:
            try:
                with urllib.request.urlopen(base + path, timeout=30) as resp:
                    body = resp.read()
                    assert b"top secret" not in body and b"root:" not in body, path
                    assert False, f"{path} answered {resp.status}"
            except urllib.error.HTTPError as exc:
                assert exc.code in (403, 404), path
    finally:
        demo.close()
