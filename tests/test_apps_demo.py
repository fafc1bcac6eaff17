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
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # gradio's use of pandas options
              pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")]


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


class _SlowPipe:
    """Stands in for a pipeline: records when each call runs, and takes a while."""

    defaults = {"duration_s": 1.0, "num_inference_steps": 2, "guidance_scale": 3.0}

    def __init__(self):
        import threading

        self.spans, self.lock = [], threading.Lock()

    def __call__(self, image, prompt, duration_s, num_inference_steps, guidance_scale, generator, progress):
        import time
        from types import SimpleNamespace

        t0 = time.perf_counter()
        time.sleep(1.0)
        with self.lock:
            self.spans.append((t0, time.perf_counter()))
        n = int(duration_s * 16000)
        return SimpleNamespace(audio=np.zeros(n, np.float32) + 0.1, sample_rate=16000,
                               log_mel=np.zeros((1, 100, 64), np.float32))


def test_generation_requests_queue_one_at_a_time(tmp_path):
    """Three requests sent at once with concurrency 1 run one after another, none dropped."""
    from gradio_client import Client, handle_file

    from melfusion.apps.demo import build_demo, launch

    pipe = _SlowPipe()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(build_demo(pipe, concurrency=1), "127.0.0.1", port, block=False)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        api = next(name for name in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
                   if "generate" in name)
        jobs = [client.submit(handle_file(str(EXAMPLE)), f"piano {i}", 1.0, i, 2, 3.0, api_name=api) for i in range(3)]
        results = [job.result(timeout=60) for job in jobs]
    finally:
        demo.close()
    assert all("Composed 1.0 s" in r[-1] for r in results)
    spans = sorted(pipe.spans)
    assert len(spans) == 3
    assert all(later[0] >= earlier[1] - 0.01 for earlier, later in zip(spans, spans[1:]))  # never overlapping


def test_serve_has_a_queue_limit_flag_and_refuses_a_bad_one():
    from melfusion.apps.demo import DEFAULT_MAX_QUEUE, serve

    parser = build_parser()
    assert parser.parse_args(["serve"]).max_queue == DEFAULT_MAX_QUEUE
    assert parser.parse_args(["serve", "--max-queue", "3"]).max_queue == 3
    with pytest.raises(MelFusionError, match="--max-queue"):
        serve(model="tiny", max_queue=0)


def test_a_full_queue_says_busy_at_once_and_a_leavers_queued_work_never_runs():
    """Concurrency 1, two may wait: with one composing and two waiting, a fourth is told "busy" at
    once; a waiting client that closes its stream frees its place, and its request never runs.
    Nothing can skip the queue by POSTing to the run route."""
    import sys
    import threading
    import time

    import httpx

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from bench_demo_load import DemoClient

    from melfusion.apps.demo import build_demo, launch

    class Slower(_SlowPipe):
        def __init__(self):
            super().__init__()
            self.entered = threading.Event()

        def __call__(self, *args, **kwargs):
            self.entered.set()
            time.sleep(1.0)  # 2 s in all
            return super().__call__(*args, **kwargs)

    def wait_for(condition, timeout=30):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.02)

    pipe = Slower()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = launch(build_demo(pipe, concurrency=1), "127.0.0.1", port, block=False, max_queue=2)
    url = f"http://127.0.0.1:{port}"
    clients, results, threads = [], {}, []

    def go(name, leave=None):
        c = DemoClient(url, timeout=60)
        clients.append(c)
        f = c.upload(EXAMPLE)
        t = threading.Thread(target=lambda: results.__setitem__(name, c.generate(f, f"piano {name}", 1.0, 0, 2, 3.0,
                                                                                 leave=leave)))
        t.start()
        threads.append(t)
        return t

    try:
        assert httpx.post(url + "/gradio_api/run/generate", json={"data": [], "fn_index": 2}).status_code == 404
        go("first")
        assert pipe.entered.wait(30)                   # composing; the queue is empty
        go("waits")
        wait_for(lambda: len(demo._queue) == 1)
        go("leaves", leave="queued").join(10)
        wait_for(lambda: len(demo._queue) == 1, 5)     # the leaver's place is free again ...
        go("also waits")
        wait_for(lambda: len(demo._queue) == 2)
        go("busy").join(10)                            # ... and now the queue is full
        for t in threads:
            t.join(60)
    finally:
        for c in clients:
            c.close()
        demo.close()
    assert results["busy"]["outcome"] == "busy" and results["busy"]["wait_s"] < 2
    assert results["leaves"]["outcome"] == "left while queued"
    assert [results[k]["outcome"] for k in ("first", "waits", "also waits")] == ["music"] * 3
    assert len(pipe.spans) == 3  # the leaver's request was never composed
