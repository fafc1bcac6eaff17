"""`melfusion serve`: the web demo. Upload an image (or pick the bundled example), write a caption,
choose duration (up to 120 s: past the model's window the piece is composed window by window),
seed, steps and guidance; get a player, the spectrogram, and WAV and MP4 files, every piece
mastered to -14 LUFS (melfusion.audio.loudness). Where the model has the null image a second
player beside the result plays the same seed's music without the picture: composed right after
the result (a second queued event, so the result is heard without waiting for it), it lets the
listener hear what the picture contributes; the player is hidden for models without it.

Generation requests queue, `concurrency` at a time, at most `max_queue` waiting: one more is
refused at once with Gradio's "busy, please try again" (HTTP 503), so every wait is bounded. A
client that goes away (its event stream closes) has its waiting requests dropped before they run.
Bad input (no image, a file that is not an image, one over the size limit, an empty caption, a
setting outside its slider) gets a message in the page, never a traceback and never a half-written
result folder.
Gradio serves only the files it was given by this app (uploads and results), never a path a
request names; the server binds to 127.0.0.1 unless told otherwise."""
from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from melfusion.errors import MelFusionError

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
DEFAULT_MAX_QUEUE = 16   # requests waiting for a generation; with concurrency 1 the last waits 16 generations
PREVIEW_SIDE = 1024      # the page's preview of an upload is at most this many pixels a side
DECODE_SLOTS = 2         # uploads decoded at once (previews run outside the queue): bounds memory
MAX_STEPS, MAX_SEED = 200, 2**63 - 1


def _examples() -> list[list[str]]:
    """The bundled example posts: examples/<name>.png (or .jpg) beside <name>.txt holding the caption."""
    out = []
    for txt in sorted(EXAMPLES_DIR.glob("*.txt")) if EXAMPLES_DIR.is_dir() else []:
        for ext in (".png", ".jpg", ".jpeg"):
            img = txt.with_suffix(ext)
            if img.is_file():
                out.append([str(img), txt.read_text(encoding="utf-8").strip()])
                break
    return out


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    try:
        import gradio
    except ImportError:
        raise MelFusionError("the web demo needs gradio: run bin/setup, or pip install gradio==6.31.0") from None
    return gradio


class Composer:
    """One loaded pipeline and the folder its results go to; `__call__` does one request."""

    def __init__(self, pipe, max_upload_mb: float = 10.0, out_root: str | os.PathLike | None = None,
                 loudness_lufs: float | None = None):
        from melfusion.audio.loudness import DEFAULT_LOUDNESS_LUFS

        self.pipe = pipe
        self.loudness_lufs = DEFAULT_LOUDNESS_LUFS if loudness_lufs is None else loudness_lufs
        self.max_upload_bytes = int(max_upload_mb * 1024 * 1024)
        self.out_root = Path(out_root or Path(tempfile.gettempdir()) / "melfusion-demo")
        self.out_root.mkdir(parents=True, exist_ok=True)
        # Previews skip the queue, so any number can arrive at once; each decode of a large upload
        # holds up to ~160 MB (40 megapixels, RGBA) for a moment: a few at a time, the rest wait.
        self.decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)

    def sweep(self, max_age_s: float = 3600.0) -> None:
        """Remove results older than an hour (Gradio keeps its own copies for the page)."""
        cutoff = time.time() - max_age_s
        for folder in self.out_root.glob("result-*"):
            try:
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass

    def check_image(self, path, draft_side: int | None = None):
        from melfusion.images import load_image

        if not path:
            raise MelFusionError("upload an image or pick an example first")
        size = Path(path).stat().st_size if Path(path).is_file() else 0
        if size > self.max_upload_bytes:
            raise MelFusionError(f"the image file is too large: {size / 2**20:.1f} MB "
                                 f"(limit {self.max_upload_bytes / 2**20:.0f} MB)")
        try:
            with self.decode_slots:
                return load_image(path, draft_side=draft_side)
        except MelFusionError as exc:
            # The message names a temporary upload path; the user knows which file they chose.
            raise MelFusionError(str(exc).replace(str(path), "the uploaded file")) from None

    def preview(self, path):
        """What the page shows for an upload: a copy at most PREVIEW_SIDE pixels a side (a 40-megapixel
        upload is not re-encoded whole for the browser), or the reason the file cannot be used."""
        if not path:
            return None, ""
        try:
            image = self.check_image(path, draft_side=PREVIEW_SIDE)
        except MelFusionError as exc:
            return None, f"**Cannot use this file:** {exc}"
        image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        return image, ""

    @staticmethod
    def settings(duration, seed, steps, guidance) -> tuple[float, int, int, float]:
        """The sliders' values, checked again here: an API client need not have used the page."""
        from melfusion.pipeline import check_duration

        def number(value, what):
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise MelFusionError(f"the {what} must be a number") from None
            if not math.isfinite(value):
                raise MelFusionError(f"the {what} must be a finite number")
            return value

        duration = check_duration(number(duration, "duration"))
        seed = number(0 if seed in (None, "") else seed, "seed")
        if not (seed == int(seed) and 0 <= seed <= MAX_SEED):
            raise MelFusionError("the seed must be a non-negative whole number")
        steps = number(steps, "number of steps")
        if not (steps == int(steps) and 1 <= steps <= MAX_STEPS):
            raise MelFusionError(f"the number of steps must be a whole number from 1 to {MAX_STEPS}")
        guidance = number(guidance, "guidance scale")
        if not 0 <= guidance <= 10:
            raise MelFusionError("the guidance scale must be between 0 and 10")
        return duration, int(seed), int(steps), guidance

    def __call__(self, image_path, caption, duration, seed, steps, guidance):
        import torch

        from melfusion.apps.spectrogram import save_spectrogram
        from melfusion.apps.video import make_video
        from melfusion.audio.io import write_wav
        from melfusion.pipeline import check_prompt

        prompt = check_prompt("" if caption is None else caption)
        duration, seed, steps, guidance = self.settings(duration, seed, steps, guidance)
        image = self.check_image(image_path)
        self.sweep()
        clock = time.perf_counter()
        result = self.pipe(image=image, prompt=prompt, duration_s=duration, num_inference_steps=steps,
                           guidance_scale=guidance, generator=torch.Generator().manual_seed(seed), progress=True)
        audio = self.master(result.audio, result.sample_rate)
        compose_s = time.perf_counter() - clock
        folder = Path(tempfile.mkdtemp(prefix="result-", dir=self.out_root))
        try:
            wav = write_wav(folder / "melfusion.wav", audio, result.sample_rate)
            png = save_spectrogram(folder / "spectrogram.png", result.log_mel)
            mp4 = make_video(folder / "melfusion.mp4", image, audio, result.sample_rate)
        except BaseException:  # no half-written result folder is left behind
            shutil.rmtree(folder, ignore_errors=True)
            raise
        seconds = len(audio) / result.sample_rate
        keys = getattr(result, "keys", None)
        key = f", key of {keys[0]}" if keys else ""  # a model that takes the tonic
        status = (f"Composed {seconds:.1f} s of music in {compose_s:.1f} s "
                  f"(seed {seed}, {int(steps)} steps, guidance {float(guidance):g}{key}).")
        return str(wav), str(png), str(wav), str(mp4), status

    def master(self, audio, sample_rate):
        from melfusion.audio.loudness import master

        return master(audio, sample_rate, self.loudness_lufs)

    @property
    def has_null_image(self) -> bool:
        return bool(getattr(self.pipe, "has_null_image", False))

    def without_picture(self, caption, duration, seed, steps, guidance) -> str:
        """The same request's music with the picture absent (the null image): same seed, same
        settings, so the difference from the result is what the picture contributes."""
        import torch

        from melfusion.audio.io import write_wav
        from melfusion.pipeline import check_prompt

        if not self.has_null_image:
            raise MelFusionError("this model cannot compose without the picture (it has no null image)")
        prompt = check_prompt("" if caption is None else caption)
        duration, seed, steps, guidance = self.settings(duration, seed, steps, guidance)
        result = self.pipe(image=None, prompt=prompt, duration_s=duration, num_inference_steps=steps,
                           guidance_scale=guidance, generator=torch.Generator().manual_seed(seed), progress=True)
        audio = self.master(result.audio, result.sample_rate)
        folder = Path(tempfile.mkdtemp(prefix="result-", dir=self.out_root))
        try:
            return str(write_wav(folder / "without-the-picture.wav", audio, result.sample_rate))
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise


def build_demo(pipe, max_upload_mb: float = 10.0, concurrency: int = 1, random_weights: bool = False):
    gr = _gradio()

    from melfusion.pipeline import MAX_LONG_DURATION_S

    composer = Composer(pipe, max_upload_mb)
    d = pipe.defaults
    pair = composer.has_null_image  # the "without the picture" player, where the model has the null image

    def preview(path):
        try:
            return composer.preview(path)
        except Exception as exc:  # a bug: a short message in the page, the details in the server's log
            print(f"melfusion serve: preview: {type(exc).__name__}: {exc}", file=sys.stderr)
            return None, "**Cannot use this file:** something went wrong while reading it"

    def generate(image_path, caption, duration, seed, steps, guidance, progress=gr.Progress(track_tqdm=True)):
        progress(0, desc="starting")
        try:
            return composer(image_path, caption, duration, seed, steps, guidance)
        except MelFusionError as exc:
            message = str(exc)
        except Exception as exc:  # a bug: a short message in the page, the details in the server's log
            print(f"melfusion serve: {type(exc).__name__}: {exc}", file=sys.stderr)
            message = "something went wrong while composing; please try again"
        # The reason stays on the page beside the (cleared) results, and pops up once as a warning.
        gr.Warning(message)
        return None, None, None, None, f"**Cannot compose:** {message}"

    def generate_pair(image_path, caption, duration, seed, steps, guidance, progress=gr.Progress(track_tqdm=True)):
        """The result, and the "without the picture" player cleared until its own event fills it."""
        result = generate(image_path, caption, duration, seed, steps, guidance, progress)
        return (*result[:4], None, result[4])

    def without_picture(result, caption, duration, seed, steps, guidance, progress=gr.Progress(track_tqdm=True)):
        if not result:  # the request itself failed: its reason is on the page already
            return None
        progress(0, desc="composing without the picture")
        try:
            return composer.without_picture(caption, duration, seed, steps, guidance)
        except MelFusionError as exc:
            gr.Warning(str(exc))
        except Exception as exc:  # a bug: a short message in the page, the details in the server's log
            print(f"melfusion serve: without the picture: {type(exc).__name__}: {exc}", file=sys.stderr)
            gr.Warning("something went wrong while composing without the picture")
        return None

    with gr.Blocks(title="melfusion: music for an image and a caption", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# melfusion\nMusic for an image and a line of text (MeLFusion, CVPR 2024). Upload an image "
                    "or pick the example, describe the music you want, and press **Generate**.")
        if random_weights:
            gr.Markdown("*This server runs a model with random weights: what it writes is noise-like, not music.*")
        with gr.Row():
            with gr.Column():
                # No file_types: Gradio would judge by the name's extension (an image named "photo" or
                # "x.jfif" refused with a bare error); load_image judges the content and says why.
                image = gr.File(label="Image (PNG, JPEG, WebP; at most "
                                f"{max_upload_mb:g} MB)", type="filepath", elem_id="image-upload")
                shown = gr.Image(label="Your image", interactive=False, height=240, elem_id="image-preview")
                caption = gr.Textbox(label="Caption", lines=3, elem_id="caption",
                                     placeholder="e.g. an acoustic folk song for an evening on the beach")
                with gr.Accordion("Settings", open=False):
                    duration = gr.Slider(1, MAX_LONG_DURATION_S, value=float(d["duration_s"]), step=0.5,
                                         label="Duration (seconds; past the model's window composed window by "
                                               "window)", elem_id="duration")
                    seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="seed")
                    steps = gr.Slider(1, 200, value=int(d["num_inference_steps"]), step=1, label="Denoising steps",
                                      elem_id="steps")
                    guidance = gr.Slider(0, 10, value=float(d["guidance_scale"]), step=0.1, label="Guidance scale",
                                         elem_id="guidance")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
                examples = _examples()
                if examples:
                    gr.Examples(examples=examples, inputs=[image, caption], label="Example")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                with gr.Row():
                    audio = gr.Audio(label="Music", type="filepath", interactive=False, elem_id="music")
                    plain = gr.Audio(label="The same music without the picture", type="filepath", interactive=False,
                                     visible=pair, elem_id="music-without-picture")
                spectrogram = gr.Image(label="Mel spectrogram", interactive=False, elem_id="spectrogram")
                wav_file = gr.File(label="WAV", interactive=False, elem_id="wav-file")
                mp4_file = gr.File(label="Video (MP4, H.264 + AAC)", interactive=False, elem_id="mp4-file")
        image.change(preview, inputs=image, outputs=[shown, status], queue=False)
        settings = [caption, duration, seed, steps, guidance]
        if pair:
            # The result first; then, where it was composed, the same seed without the picture. One
            # concurrency group for both, so `concurrency` bounds the compositions running at once.
            # API clients find both as they find the plain one: "generate", its status last.
            button.click(generate_pair, inputs=[image, *settings],
                         outputs=[audio, spectrogram, wav_file, mp4_file, plain, status], api_name="generate",
                         concurrency_limit=concurrency, concurrency_id="compose").then(
                without_picture, inputs=[audio, *settings], outputs=plain, api_name="without_picture",
                concurrency_limit=concurrency, concurrency_id="compose")
        else:
            button.click(generate, inputs=[image, *settings],
                         outputs=[audio, spectrogram, wav_file, mp4_file, status], concurrency_limit=concurrency)
    return demo


class BadRequestsAreNot500:
    """ASGI wrapper: Gradio answers 500 to some requests no page sends (an upload part without a file
    name, a file reference naming a server path nobody uploaded, a value its component cannot take).
    Nothing was read or run for them; the app's own handlers never raise (they answer with a message).
    So on the upload and direct-call routes a 500 becomes what it is, 400, and the server logs a line."""

    PATHS = ("/gradio_api/upload", "/gradio_api/run/")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.PATHS):
            return await self.app(scope, receive, send)
        started = False

        async def send_checked(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 500:
                    print(f"melfusion serve: refused a malformed request to {scope['path']} (400)", file=sys.stderr)
                    message = {**message, "status": 400}
            await send(message)

        try:
            await self.app(scope, receive, send_checked)
        except Exception as exc:
            if started:
                raise
            print(f"melfusion serve: refused a malformed request to {scope['path']} ({type(exc).__name__}: {exc})",
                  file=sys.stderr)
            body = b'{"error": "bad request"}'
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 400, "headers": headers})
            await send({"type": "http.response.body", "body": body})


def launch(demo, host: str = "127.0.0.1", port: int = 7860, max_upload_mb: float = 10.0, block: bool = True,
           max_queue: int = DEFAULT_MAX_QUEUE):
    gr = _gradio()

    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web fonts
    # api_open=False: Gradio would otherwise run a POST to /gradio_api/run/generate at once, beside
    # the queue, and no concurrency or queue limit would hold.
    demo.queue(max_size=max_queue, api_open=False)
    from starlette.middleware import Middleware

    try:
        demo.launch(server_name=host, server_port=port, max_file_size=int(max_upload_mb * 1024 * 1024), share=False,
                    show_error=False, prevent_thread_lock=not block, quiet=True, theme=theme,
                    app_kwargs={"middleware": [Middleware(BadRequestsAreNot500)]})
    except OSError as exc:
        raise MelFusionError(f"cannot listen on {host}:{port}: {exc}") from None
    return demo


def serve(model=None, host: str = "127.0.0.1", port: int = 7860, concurrency: int = 1, max_upload_mb: float = 10.0,
          max_queue: int = DEFAULT_MAX_QUEUE):
    from melfusion.loading import DEFAULT_MODEL_DIR, load_model, quiet_libraries

    if concurrency < 1:
        raise MelFusionError("--concurrency must be at least 1")
    if max_queue < 1:
        raise MelFusionError("--max-queue must be at least 1")
    _gradio()  # before loading a model
    if not 0 < max_upload_mb <= 200:
        raise MelFusionError("--max-upload-mb must be between 0 and 200")
    quiet_libraries()
    pipe = load_model(model)
    random_weights = (model is None and not (DEFAULT_MODEL_DIR / "model_index.json").is_file()) or \
        (model is not None and not Path(model).exists())
    if host not in LOOPBACK:
        print(f"note: listening on {host}, reachable from other machines", file=sys.stderr)
    print(f"melfusion demo at http://{host}:{port}/  (Ctrl-C stops)", file=sys.stderr)
    launch(build_demo(pipe, max_upload_mb, concurrency, random_weights), host, port, max_upload_mb, block=True,
           max_queue=max_queue)
