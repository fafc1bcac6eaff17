"""`MelFusionPipeline`: an image and a caption in, a waveform out, by the paper's algorithm.

    pipe = MelFusionPipeline.from_pretrained("path/to/model")
    out = pipe(image="cover.png", prompt="lo-fi hip-hop with a dusty piano", duration_s=10,
               generator=torch.Generator().manual_seed(0))
    out.audio, out.sample_rate

    pipe(image=None, ...)              # the same seed's music with the picture absent (the null image)
    pipe(..., duration_s=90)           # longer than the model's window: composed window by window
    pipe(..., loudness_lufs=-14)       # mastered: that integrated loudness, a fade, peaks under -1 dBFS
"""
from __future__ import annotations

import functools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from melfusion.atomic import atomic_dir
from melfusion.audio.mel import MelConfig
from melfusion.audio.vae import AudioVAE
from melfusion.audio.vocoder import Vocoder, load_vocoder
from melfusion.errors import MelFusionError
from melfusion.images import image_to_tensor, load_image
from melfusion.long import (WINDOW_OVERLAP, WINDOW_TAIL_S, Held, crossfade_mels, level_after, level_at_start,
                            overlap_frames, plan_windows, tail_frames)
from melfusion.music.keys import NO_KEY, draw_keys, key_name, parse_key
from melfusion.music.ldm import MusicLDM
from melfusion.schedulers import SOLVERS, make_scheduler
from melfusion.synapse import VisualSynapse
from melfusion.t2i.model import ImageTrajectory, TextToImageModel
from melfusion.text.encoders import TextEncoder

INDEX_NAME = "model_index.json"
MAX_CAPTION_CHARS = 1000
# MAX_DURATION_S bounds one window (one pass of the models over the whole latent); a piece may be
# up to MAX_LONG_DURATION_S, composed window by window (melfusion.long) past the model's window.
MIN_DURATION_S, MAX_DURATION_S, MAX_LONG_DURATION_S = 1.0, 30.0, 120.0
COMPONENTS = ("text_encoder", "t2i", "audio_vae", "unet", "synapse", "scheduler", "vocoder")
DISTILLED_NAME = "distilled.json"  # in a model's distilled/ folder: the guidance its one pass stands for
DISTILLED_KEYS = ("guidance_scale", "image_guidance_scale", "key_guidance")
CONDITIONINGS = ("synapse", "text", "concat", "tangopp", "image-encoder")
NEEDS_IMAGE_ENCODER = ("concat", "tangopp", "image-encoder")  # the baselines that read the image themselves
TOKENS_IN_CAPTION = ("concat", "tangopp")                     # image tokens join the caption's tokens
READS_SYNAPSE = ("synapse", "image-encoder")                  # the synapse layers carry the image


@dataclass
class MelFusionOutput:
    audio: np.ndarray          # (samples,) for one prompt, (batch, samples) for several
    sample_rate: int
    log_mel: torch.Tensor      # (batch, frames, mels)
    timings: dict = field(default_factory=dict)  # seconds per stage
    # Past the model's window: each window's span in mel frames, its final latent, and the mel
    # frames where new music begins after a held overlap (melfusion.long.join_report reads them).
    windows: list = field(default_factory=list)
    window_latents: list = field(default_factory=list)
    joins: list = field(default_factory=list)
    keys: list = field(default_factory=list)  # each clip's tonic, for a model that takes one ("Eb", "none")


# Control characters (NUL, escape sequences, bells; C0 and C1) mean nothing in a caption: spaces.
_CONTROLS_TO_SPACE = {c: " " for c in (*range(0x20), *range(0x7F, 0xA0))}


def check_prompt(prompt: str) -> str:
    if not isinstance(prompt, str):
        raise MelFusionError("the caption must be text")
    if len(prompt) > 100 * MAX_CAPTION_CHARS:  # before any per-character work on a huge paste
        raise MelFusionError(f"the caption is too long: {len(prompt)} characters (limit {MAX_CAPTION_CHARS})")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: bytes that were not UTF-8 (a command line in another locale)
        raise MelFusionError("the caption is not valid text (broken UTF-8)") from None
    text = " ".join(prompt.translate(_CONTROLS_TO_SPACE).split())
    if not text:
        raise MelFusionError("the caption is empty")
    if len(text) > MAX_CAPTION_CHARS:
        raise MelFusionError(f"the caption is too long: {len(text)} characters (limit {MAX_CAPTION_CHARS})")
    if not any(ch.isalnum() for ch in text):
        raise MelFusionError("the caption has no words in it")
    return text


PRECISIONS = ("fp32", "bf16", "auto")


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU does bfloat16 arithmetic natively (AVX512-BF16 or AMX); without it bf16
    autocast is emulated and slower than fp32."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        if probe is not None and not probe():
            return False
    except RuntimeError:
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str) -> bool:
    if precision not in PRECISIONS:
        raise MelFusionError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision == "bf16" or (precision == "auto" and cpu_has_bf16())


class _quiet_diffusers:
    """diffusers' warnings silenced for a block (only where diffusers is in use: no import otherwise)."""

    def __init__(self, enabled: bool):
        self.enabled, self.saved = enabled, None

    def __enter__(self):
        if self.enabled:
            from diffusers.utils import logging as dlogging

            self.saved = dlogging.get_verbosity()
            dlogging.set_verbosity_error()

    def __exit__(self, *exc):
        if self.saved is not None:
            from diffusers.utils import logging as dlogging

            dlogging.set_verbosity(self.saved)


def _check_count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MelFusionError(f"{what} must be a whole number >= 0, got {value!r}")
    return value


def check_guided_steps(guided_steps) -> int | None:
    """`guided_steps`: None (every step guided) or a whole number >= 0."""
    return None if guided_steps is None else _check_count(guided_steps, "guided steps")


def check_teacher_steps(teacher_steps) -> int | None:
    """`teacher_steps`: None (the model's choice) or a whole number >= 0."""
    return None if teacher_steps is None else _check_count(teacher_steps, "teacher steps")


def check_duration(duration_s: float, limit: float = MAX_LONG_DURATION_S) -> float:
    """A piece's length: up to 120 s (past the model's window it is composed window by window);
    `limit=MAX_DURATION_S` for what one window may be."""
    if isinstance(duration_s, bool) or not isinstance(duration_s, (int, float)) or not math.isfinite(duration_s) \
            or not MIN_DURATION_S <= duration_s <= limit:
        raise MelFusionError(f"duration must be between {MIN_DURATION_S:g} and {limit:g} seconds, "
                             f"got {duration_s}")
    return float(duration_s)


@dataclass
class _Guidance:
    """What every denoising step of one call reads: the guidance passes' captions, masks and
    image flags, the image (its inversion, or a baseline's keys and values) and the scales."""
    context: torch.Tensor
    context_mask: torch.Tensor
    present: torch.Tensor
    n_pass: int
    trajectory: ImageTrajectory | None
    image_kv: list | None
    guidance: float
    image_guidance: float | None
    bf16: bool
    key: torch.Tensor | None = None  # (n_pass * batch,) tonic labels, for a model that takes them
    guided_steps: int | None = None  # guidance on the first N steps only, the rest conditional (None: all)
    music: MusicLDM | None = None    # the network the passes run through (None: the pipeline's music UNet)
    student: "_Guidance | None" = None  # the distilled network's one pass, for the steps after teacher_steps
    teacher_steps: int = 0

    def at_step(self, i: int) -> "_Guidance":
        """What step `i` reads: these passes, or the distilled pass after the teacher's first
        steps."""
        return self if self.student is None or i < self.teacher_steps else self.student

    def last_pass(self) -> "_Guidance":
        """The fully conditioned pass alone (caption and picture, batch b): an unguided step."""
        b = self.context.shape[0] // self.n_pass
        return _Guidance(self.context[-b:], self.context_mask[-b:], self.present[-b:], 1, self.trajectory,
                         self.image_kv, self.guidance, self.image_guidance, self.bf16,
                         None if self.key is None else self.key[-b:], music=self.music)


class MelFusionPipeline:
    def __init__(self, text_encoder: TextEncoder, t2i: TextToImageModel, audio_vae: AudioVAE, music: MusicLDM,
                 vocoder: Vocoder, mel: MelConfig = MelConfig(), defaults: dict | None = None,
                 preset: str | None = None, conditioning: str = "synapse", image_encoder=None,
                 distilled: MusicLDM | None = None, distilled_config: dict | None = None):
        """`distilled`: a guidance-distilled copy of the music network (melfusion.training.distill)
        whose one pass stands for the three guided passes at the scales `distilled_config` names."""
        self.text_encoder, self.t2i, self.audio_vae = text_encoder, t2i, audio_vae
        if (distilled is None) != (distilled_config is None):
            raise MelFusionError("a distilled network needs its config (the guidance it stands for), and back")
        self.distilled, self.distilled_config = distilled, distilled_config
        self.music, self.vocoder, self.mel = music, vocoder, mel
        self.defaults = dict(num_inference_steps=25, guidance_scale=3.0, duration_s=10.0, inversion_steps=None,
                             inversion_refine=0, solver="ddim", precision="fp32")
        self.defaults.update(defaults or {})
        self.preset = preset
        # How the image reaches the music model: the paper's synapse, or a baseline's way
        # (melfusion.baselines); every way but "synapse" and "text" needs an image encoder.
        if conditioning not in CONDITIONINGS:
            raise MelFusionError(f"unknown conditioning {conditioning!r}")
        if conditioning in NEEDS_IMAGE_ENCODER and image_encoder is None:
            raise MelFusionError(f"conditioning {conditioning!r} needs an image encoder")
        self.conditioning, self.image_encoder = conditioning, image_encoder
        self.link_synapse()

    def link_synapse(self):
        """Find, for each synapse layer, the T2I layer it reads (after the synapse changes)."""
        self._partner_index = []
        if self.conditioning != "synapse":
            return
        layer_index = {name: i for i, name in enumerate(self.t2i.layer_names)}
        missing = [p for p in self.music.synapse.config.partners if p not in layer_index]
        if missing:
            raise MelFusionError(f"the synapse reads T2I layers this T2I model lacks: {missing[0]}")
        self._partner_index = [layer_index[p] for p in self.music.synapse.config.partners]

    # -- shapes ------------------------------------------------------------------------------
    @property
    def frame_multiple(self) -> int:
        """Mel frames must divide by the VAE's and the UNet's downsampling together."""
        return self.audio_vae.factor * 2 ** (len(self.music.unet.config.block_out_channels) - 1)

    @property
    def sample_rate(self) -> int:
        return self.vocoder.sample_rate

    def frames_for(self, duration_s: float) -> int:
        from melfusion.audio.mel import frames_for

        return frames_for(duration_s, self.mel, self.frame_multiple)

    # -- the algorithm's steps -----------------------------------------------------------------
    def encode_prompt(self, prompts: list[str]):
        """Caption tokens `(batch, tokens, dim)` and mask, plus the empty caption's for guidance."""
        text, mask = self.text_encoder.encode(prompts)
        null_text, null_mask = self.text_encoder.encode([""])
        return text, mask, null_text, null_mask

    def prepare_images(self, images) -> torch.Tensor:
        """Paths or PIL images -> `(batch, 3, size, size)` pixels in [0, 1] for the T2I VAE."""
        from PIL import Image

        out = []
        for img in images:
            if isinstance(img, torch.Tensor):
                out.append(img.float())
                continue
            if not isinstance(img, Image.Image):
                img = load_image(img)
            out.append(image_to_tensor(img, self.t2i.image_size))
        return torch.stack(out)

    def invert_image(self, pixels: torch.Tensor, num_steps: int, progress: bool = False) -> ImageTrajectory:
        """Encode the image and DDIM-invert it, keeping each step's decoder keys and values."""
        latent = self.t2i.encode_image(pixels)
        bar = tqdm(total=num_steps, desc="inverting image", disable=not progress, leave=False)
        traj = self.t2i.invert(latent, num_steps, capture_tokens=self.text_encoder.max_length,
                               refine_iters=int(self.defaults.get("inversion_refine") or 0), progress=bar.update)
        bar.close()
        stats = self.music.synapse.config.stats_timesteps
        if stats and traj.timesteps[1:] != stats:
            raise MelFusionError(f"the image was inverted at timesteps {traj.timesteps[1:]}, but the synapse's "
                                 f"image statistics were measured at {stats}")
        return traj

    def synapse_inputs(self, t2i_kv: list) -> list:
        """Per synapse layer, the `(keys, values)` of the T2I layer it reads (from all captured layers)."""
        return [t2i_kv[i] for i in self._partner_index]

    def image_features(self, trajectory: ImageTrajectory, music_timestep: int):
        """The synapse's input at a music step: features of the inverted step at the same noise
        fraction, standardised by the model's image statistics."""
        idx = trajectory.index_for(float(music_timestep) / self.music.num_train_timesteps)
        kv = trajectory.features[idx]
        batch = kv[0][0].shape[0]
        return self.music.synapse.standardize(self.synapse_inputs(kv),
                                              torch.full((batch,), idx - 1, dtype=torch.long))

    def image_features_for_training(self, trajectory: ImageTrajectory, timesteps: torch.Tensor):
        """Per-sample features for a batch of music timesteps, from one T2I UNet pass.

        As at sampling, the feature for trajectory step i is read from the T2I UNet at
        timestep t_i, on the latent the inversion read it from (see `ImageTrajectory`).
        """
        idx = [trajectory.index_for(float(t) / self.music.num_train_timesteps) for t in timesteps.tolist()]
        b = torch.arange(len(idx))
        latents = trajectory.latents[torch.tensor(idx) - trajectory.feature_offset, b]
        t2i_steps = torch.tensor([trajectory.timesteps[i] for i in idx])
        kv = self.t2i.features(latents, t2i_steps, self.text_encoder.max_length)
        return self.music.synapse.standardize(self.synapse_inputs(kv), torch.tensor(idx) - 1)

    def inversion_steps_for(self, requested: int | None, denoising_steps: int) -> int:
        """The inversion's step count: the one the model was trained on where it says so (its
        image statistics were measured on those steps; other steps feed features it never saw)."""
        stats = self.music.synapse.config.stats_timesteps if self.conditioning == "synapse" else []
        trained = self.defaults.get("inversion_steps")
        steps = int(requested or trained or denoising_steps)
        if stats and steps != len(stats):
            raise MelFusionError(f"this model was trained on {len(stats)}-step image inversions; "
                                 f"{steps} inversion steps would feed the synapse features it never saw")
        return steps

    # -- windows and the absent picture ----------------------------------------------------------
    @property
    def has_null_image(self) -> bool:
        """Whether this model can compose with the picture absent: its synapse reads an absent
        image as the null image (zero features, alpha kept), so only the picture goes. Models
        saved before the null image read absence as alpha = 0 ("alpha-zero"), another function
        than the one they compose with: no honest "without the picture" there. The baselines
        read the picture with their own encoders and have no such switch."""
        return self.conditioning in ("synapse", "text") and self.music.synapse.config.absent == "null-image"

    @property
    def window_s(self) -> float:
        """The length the model composes in one pass: its trained clip length (`window_s` in its
        defaults where it says so, else its default duration). Longer pieces are windows of it."""
        d = self.defaults
        return check_duration(float(d.get("window_s") or d["duration_s"]), MAX_DURATION_S)

    def window_overlap(self) -> float:
        share = float(self.defaults.get("window_overlap", WINDOW_OVERLAP))
        if not 0.0 < share < 1.0:
            raise MelFusionError(f"window_overlap must lie strictly between 0 and 1, got {share}")
        return share

    # -- composing -------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, image, prompt, duration_s: float | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None, inversion_steps: int | None = None,
                 progress: bool = True, image_guidance_scale: float | None = None, solver: str | None = None,
                 precision: str | None = None, loudness_lufs: float | bool | None = None,
                 key=None, guided_steps: int | None = None, key_guidance: bool | None = None,
                 distilled: bool | None = None, teacher_steps: int | None = None, step_callback=None,
                 output_type: str = "audio") -> MelFusionOutput:
        """`image`: a path, PIL image or pixel tensor (a list of them for a list of captions), or
        None for the music with the picture absent (the null image; `has_null_image` says whether
        the model has one): the same seed gives the same starting noise either way, so the two
        differ by what the picture contributes. `duration_s`: up to 120 s; past the model's
        window (`window_s`) the piece is composed window by window (melfusion.long); up to it,
        one pass, as always. `solver`: "ddim" (the paper's), "dpm++2m" or "unipc". `precision`:
        "fp32", "bf16" (the music UNet under bfloat16 autocast) or "auto" (bf16 where this CPU has
        bfloat16 arithmetic); both default to the model's saved choice. The image inversion
        always runs the DDIM steps the model was trained on. `loudness_lufs`: master the result
        to that integrated loudness (melfusion.audio.loudness: a 50 ms fade, peaks under -1 dBFS);
        None (the default, unless the model's defaults say `loudness_lufs`) or False leaves the
        model's own output, which is what the evaluation scores. `key`: for a model that takes the
        tonic (melfusion.music.keys), a tonic name ("Eb"), "none", or None / "random" for one drawn
        from each clip's seed (a list: one per caption); the picture still sets the mode.
        `guided_steps`: classifier-free guidance on the first N denoising steps only, the later
        (low-noise) ones a single conditional pass (default: the model's saved choice, else every
        step); N >= the steps is plain guidance throughout, 0 none at all. `key_guidance`: for a
        model that takes the tonic, the unconditional guidance pass also drops the key ("no key"),
        so classifier-free guidance pushes towards the tonic as well as the caption, at no extra
        pass (default: the model's saved choice, else off: every pass reads the key).
        `distilled`: for a model with a guidance-distilled network (`has_distilled`), one pass of
        it per step in place of the guided passes, where the call's guidance (scales, key
        guidance, every step guided, the picture present) is the one it was distilled for; None
        (the default) uses it wherever that holds unless the model's defaults say
        `distilled: false`, True insists (an error where it does not hold), False never.
        `teacher_steps`: where the distilled network runs, the first N steps take the guided
        passes of the network it was distilled from, the rest its one pass (default: the model's
        saved choice, else 0: the distilled pass throughout).
        `step_callback(i, t, model_input, output)`: called after each denoising step of a
        one-window piece with the scaled latent the network read (the conditional batch) and the
        guided output the solver took. `output_type`: "audio", or "latent" for the final audio
        latent alone (`log_mel` holds it; nothing is decoded or vocoded)."""
        if output_type not in ("audio", "latent"):
            raise MelFusionError(f"output_type must be 'audio' or 'latent', got {output_type!r}")
        d = self.defaults
        duration_s = check_duration(d["duration_s"] if duration_s is None else duration_s)
        steps = int(d["num_inference_steps"] if num_inference_steps is None else num_inference_steps)
        guidance = float(d["guidance_scale"] if guidance_scale is None else guidance_scale)
        inv_steps = self.inversion_steps_for(inversion_steps, steps)
        if not 1 <= steps <= 1000 or not 1 <= inv_steps <= 1000:
            raise MelFusionError("the number of steps must be between 1 and 1000")
        if not math.isfinite(guidance) or not 0 <= guidance <= 50:
            raise MelFusionError(f"guidance scale must be between 0 and 50, got {guidance}")
        if image_guidance_scale is None:
            image_guidance_scale = d.get("image_guidance_scale")
        image_guidance = None if image_guidance_scale is None else float(image_guidance_scale)
        if image_guidance is not None and (not math.isfinite(image_guidance) or not 0 <= image_guidance <= 50):
            raise MelFusionError(f"image guidance scale must be between 0 and 50, got {image_guidance}")
        guided_steps = check_guided_steps(d.get("guided_steps") if guided_steps is None else guided_steps)
        if guided_steps is not None and guided_steps >= steps:
            guided_steps = None  # every step guided
        solver = d.get("solver") or "ddim" if solver is None else solver
        if solver not in SOLVERS:
            raise MelFusionError(f"unknown solver {solver!r}: choose one of {', '.join(SOLVERS)}")
        bf16 = use_bf16(d.get("precision") or "fp32" if precision is None else precision)
        if loudness_lufs is None:
            loudness_lufs = d.get("loudness_lufs")
        if loudness_lufs is False:  # explicitly off, whatever the model's default
            loudness_lufs = None
        if loudness_lufs is not None:
            from melfusion.audio.loudness import check_loudness

            loudness_lufs = check_loudness(loudness_lufs)
        single = isinstance(prompt, str)
        prompts = [check_prompt(p) for p in ([prompt] if single else list(prompt))]
        key_labels = self._key_labels(key, len(prompts), generator)
        if key_guidance is None:
            key_guidance = bool(d.get("key_guidance", False)) and key_labels is not None
        elif key_guidance and key_labels is None:
            raise MelFusionError("key guidance is for a model that takes a key (this one was trained without)")
        no_image = image is None
        if no_image and not self.has_null_image:
            raise MelFusionError(self.no_null_image_reason())
        if self.conditioning == "text" or image_guidance == guidance or no_image:
            image_guidance = None  # the same as plain guidance (or nothing to guide: no image is read)
        student = self._use_distilled(distilled, guidance, image_guidance, key_guidance, guided_steps, no_image)
        teacher_steps = _check_count(d.get("teacher_steps", 0) if teacher_steps is None else teacher_steps,
                                     "teacher steps")
        pixels = None
        if not no_image:
            images = [image] if single or not isinstance(image, (list, tuple)) else list(image)
            if any(img is None for img in images):
                raise MelFusionError("either every caption has a picture or none has (image=None)")
            if len(images) != len(prompts):
                raise MelFusionError(f"{len(images)} images for {len(prompts)} captions")
            pixels = self.prepare_images(images)
        window_s = self.window_s
        long_piece = duration_s > window_s
        overlap = self.window_overlap() if long_piece else None
        timings, clock = {}, time.perf_counter()

        # 1. Encode the caption (and the empty caption for classifier-free guidance).
        text, mask, null_text, null_mask = self.encode_prompt(prompts)
        timings["text"] = time.perf_counter() - clock

        # 2. Encode the image and DDIM-invert it with the frozen T2I model, keeping its features.
        #    (The baselines read the image with their image encoder instead; without the picture
        #    nothing is read: the synapse sees the null image.)
        clock = time.perf_counter()
        trajectory, image_kv, image_tokens = None, None, None
        if no_image:
            pass
        elif self.conditioning == "synapse":
            # fp32 whatever the precision: the T2I UNet's 16 x 16 latents run slower under bf16
            # autocast than without it (0.29 against 0.20 s for 12 steps), and the features stay exact.
            trajectory = self.invert_image(pixels, inv_steps, progress)
        elif self.conditioning != "text":
            image_tokens = self.image_encoder(pixels)
            if self.conditioning == "image-encoder":
                from melfusion.baselines import encoder_kv

                image_kv = encoder_kv(image_tokens, self.text_encoder.max_length, len(self.music.synapse.layers))
        timings["inversion"] = time.perf_counter() - clock

        # 3. The guidance passes. Unconditional: empty caption and the null image. With a
        # separate image scale a third pass, caption with the null image, splits the two terms:
        # e = e(-,-) + g (e(T,-) - e(-,-)) + g_img (e(T,I) - e(T,-)); the caption has the same
        # weight in e(T,-) as in e(T,I), so the image term adds the picture and nothing else.
        clock = time.perf_counter()
        b = len(prompts)
        guided = guidance != 1.0 or image_guidance is not None
        null = (null_text.expand(b, -1, -1), null_mask.expand(b, -1), 0.0)
        if image_guidance is not None:
            teacher_passes = [null, (text, mask, 0.0), (text, mask, 1.0)]
        elif guided:
            teacher_passes = [null, (text, mask, 1.0)]
        else:
            teacher_passes = [(text, mask, 1.0)]

        def guidance_for(passes, music=None):
            n_pass = len(passes)
            context = torch.cat([p[0] for p in passes])
            context_mask = torch.cat([p[1] for p in passes])
            present = torch.cat([torch.full((b,), p[2]) for p in passes])
            if image_tokens is not None and self.conditioning in TOKENS_IN_CAPTION:
                from melfusion.music.ldm import append_image_tokens

                context, context_mask = append_image_tokens(context, context_mask,
                                                            image_tokens.repeat(n_pass, 1, 1), present)
            return _Guidance(context, context_mask, present, n_pass, trajectory, image_kv, guidance, image_guidance,
                             bf16, None if key_labels is None else torch.tensor(
                                 ([NO_KEY] * b if key_guidance and n_pass > 1 else key_labels)
                                 + key_labels * (n_pass - 1), dtype=torch.long),
                             guided_steps if n_pass > 1 else None, music)

        # The distilled network's one pass stands for the guided passes (after the teacher's
        # first `teacher_steps`, where those are asked for).
        one_pass = guidance_for([(text, mask, 1.0)], self.distilled) if student else None
        if one_pass is not None and teacher_steps == 0:
            cond = one_pass
        else:
            cond = guidance_for(teacher_passes)
            cond.student, cond.teacher_steps = one_pass, teacher_steps

        # 4. Denoise from noise in the audio latent space (5. decode and vocode).
        if not long_piece:
            frames = self.frames_for(duration_s)
            latents = self._noise(b, frames // self.audio_vae.factor, generator)
            bar = tqdm(total=steps, desc="composing", disable=not progress, leave=False)
            latents = self._denoise(latents, self._scheduler(solver, steps), cond, bar, callback=step_callback)
            bar.close()
            timings["denoising"] = time.perf_counter() - clock
            if output_type == "latent":
                return MelFusionOutput(None, self.sample_rate, latents, timings,
                                       keys=[key_name(k) for k in key_labels or []])
            clock, decoding = time.perf_counter(), 0.0
            log_mel = self._decode(latents, cond.bf16)
            windows, window_latents, joins = [], [], []
        else:
            if output_type == "latent" or step_callback is not None:
                raise MelFusionError(f"a latent output and step callbacks are for one window "
                                     f"(up to {window_s:g} s), not {duration_s:g} s")
            log_mel, windows, window_latents, joins, decoding = self._compose_windows(
                b, duration_s, window_s, overlap, generator, solver, steps, cond, progress)
            timings["denoising"] = time.perf_counter() - clock - decoding
            clock = time.perf_counter()
        wave = self.vocoder(log_mel)[:, : int(round(duration_s * self.sample_rate))]
        timings["vocoding"] = time.perf_counter() - clock + decoding
        audio = wave.cpu().numpy().astype(np.float32)
        if loudness_lufs is not None:
            from melfusion.audio.loudness import master

            clock = time.perf_counter()
            audio = master(audio, self.sample_rate, loudness_lufs)
            timings["mastering"] = time.perf_counter() - clock
        return MelFusionOutput(audio[0] if single else audio, self.sample_rate, log_mel, timings, windows,
                               window_latents, joins, [key_name(k) for k in key_labels or []])

    @property
    def has_distilled(self) -> bool:
        """Whether this model carries a guidance-distilled music network (one pass per step)."""
        return self.distilled is not None

    def _use_distilled(self, requested: bool | None, guidance: float, image_guidance: float | None,
                       key_guidance: bool, guided_steps: int | None, no_image: bool) -> bool:
        """Whether this call runs the distilled network (see `__call__`'s `distilled`)."""
        if requested is None:
            requested = None if self.defaults.get("distilled", True) else False
        if requested is False:
            return False
        if self.distilled is None:
            if requested:
                raise MelFusionError("this model has no distilled network (--distilled on needs one)")
            return False
        dc = self.distilled_config
        wanted = (float(dc["guidance_scale"]), float(dc["image_guidance_scale"]), bool(dc["key_guidance"]))
        mismatch = None
        if no_image:
            mismatch = "the picture is absent"
        elif guided_steps is not None:
            mismatch = "guidance is on the first steps only"
        elif (guidance, image_guidance, key_guidance) != wanted:
            mismatch = (f"it was distilled for guidance {wanted[0]:g}, image guidance {wanted[1]:g}, key guidance "
                        f"{'on' if wanted[2] else 'off'}; this call asks for {guidance:g}, "
                        f"{'none' if image_guidance is None else f'{image_guidance:g}'}, {'on' if key_guidance else 'off'}")
        if mismatch and requested:
            raise MelFusionError(f"the distilled network does not apply: {mismatch}")
        return mismatch is None

    def _key_labels(self, key, batch: int, generator) -> list[int] | None:
        """Each clip's tonic label (melfusion.music.keys), or None for a model without key conditioning."""
        if not self.music.takes_key:
            keys = key if isinstance(key, (list, tuple)) else [key]
            if any(parse_key(k) is not None for k in keys):
                raise MelFusionError("this model does not take a key (it was trained without key conditioning)")
            return None
        keys = list(key) if isinstance(key, (list, tuple)) else [key] * batch
        if len(keys) != batch:
            raise MelFusionError(f"{len(keys)} keys for {batch} captions")
        labels = [parse_key(k, with_mode=self.music.takes_mode) for k in keys]
        if any(k is None for k in labels):
            drawn = draw_keys(generator, batch)
            labels = [d if k is None else k for k, d in zip(labels, drawn)]
        return labels

    def no_null_image_reason(self) -> str:
        if self.conditioning not in ("synapse", "text"):
            return (f"this model ({self.conditioning} conditioning) reads the picture with its own image encoder "
                    "and has no null image: it cannot compose without the picture")
        return ("this model has no null image (its synapse was saved before it and reads an absent picture as "
                "alpha = 0, 'alpha-zero'): it cannot compose without the picture")

    def _noise(self, batch: int, latent_frames: int, generator) -> torch.Tensor:
        """Starting noise `(batch, c, latent_frames, mels / f)`; with one generator per clip a
        clip's noise is the same whatever batch it is made in."""
        f = self.audio_vae.factor
        shape = (batch, self.audio_vae.latent_channels, latent_frames, self.mel.n_mels // f)
        if isinstance(generator, (list, tuple)):
            if len(generator) != batch:
                raise MelFusionError(f"{len(generator)} generators for {batch} captions")
            return torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in generator])
        return torch.randn(shape, generator=generator)

    def _scheduler(self, solver: str, steps: int):
        scheduler = make_scheduler(solver, self.music.scheduler_config)
        scheduler.set_timesteps(steps)
        return scheduler

    def _denoise(self, noise: torch.Tensor, scheduler, cond: _Guidance, bar, held: Held | None = None,
                 callback=None):
        """The denoising loop over one window; at step t the synapse reads the image at the
        matching inverted step. `held`: frames known in advance (the overlap with the window
        before), replaced after every step by the known latent at the level just reached."""
        latents = noise * scheduler.init_noise_sigma
        if held is not None:
            latents = held.apply(latents, level_at_start(scheduler))
        unguided = cond.last_pass() if cond.guided_steps is not None else None
        for i, t in enumerate(scheduler.timesteps):
            step = cond.at_step(i) if unguided is None or i < cond.guided_steps else unguided
            n_pass = step.n_pass
            kv = self.image_features(step.trajectory, int(t)) if step.trajectory is not None else step.image_kv
            if n_pass > 1 and kv is not None:
                kv = [(k.repeat(n_pass, *[1] * (k.dim() - 1)), v.repeat(n_pass, *[1] * (v.dim() - 1))) for k, v in kv]
            model_in = scheduler.scale_model_input(latents.repeat(n_pass, *[1] * (latents.dim() - 1)), t)
            music = step.music or self.music
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cond.bf16):
                out = music.predict(model_in, t, step.context, step.context_mask, kv, step.present, step.key).float()
            if n_pass == 3:
                uncond, text_only, full = out.chunk(3)
                out = uncond + step.guidance * (text_only - uncond) + step.image_guidance * (full - text_only)
            elif n_pass == 2:
                uncond, c = out.chunk(2)
                out = uncond + step.guidance * (c - uncond)
            if callback is not None:
                callback(i, int(t), model_in[-latents.shape[0]:], out)
            latents = scheduler.step(out, t, latents).prev_sample
            if held is not None:
                latents = held.apply(latents, level_after(scheduler, i))
            bar.update()
        return latents

    def _decode(self, latents: torch.Tensor, bf16: bool) -> torch.Tensor:
        """Audio latent -> log-mel; the decoder under bf16 autocast with the music UNet (half its
        time on this CPU; docs/speed.md has what it costs in quality)."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return self.audio_vae.decode(latents).float()

    def _compose_windows(self, batch, duration_s, window_s, overlap, generator, solver, steps, cond, progress):
        """A piece longer than the window (melfusion.long): windows of the model's length, each
        denoised with its overlap with the one before held fixed (up to where that one's ending
        begins: the ending is composed anew, as continuation), decoded one by one and
        cross-faded as log-mels. Returns the log-mel, the windows' mel spans, their final
        latents, the join frames and the seconds spent decoding."""
        f = self.audio_vae.factor
        total = self.frames_for(duration_s) // f
        window = self.frames_for(window_s) // f
        tail_s = float(self.defaults.get("window_tail_s", WINDOW_TAIL_S))
        tail = tail_frames(window * f, window_s, self.mel.frames_per_second, f, tail_s)
        if tail_s < 0 or tail >= window // 2:
            raise MelFusionError(f"window_tail_s leaves too little of a {window_s:g} s window")
        spans = plan_windows(total, window, min(overlap_frames(window, overlap), window - tail - 1), tail)
        bar = tqdm(total=len(spans) * steps, desc=f"composing window 1/{len(spans)}", disable=not progress,
                   leave=False)
        joined, latents_out, decoding = None, [], 0.0
        for k, (start, end) in enumerate(spans):
            bar.set_description(f"composing window {k + 1}/{len(spans)}")
            noise = self._noise(batch, window, generator)
            held = None
            if k:
                prev_start, prev_end = spans[k - 1]
                used = prev_end - tail  # the window before, without its ending
                held = Held(latents_out[-1][:, :, start - prev_start: used - prev_start], noise[:, :, : used - start])
                joined = joined[:, : used * f]
            latents_out.append(self._denoise(noise, self._scheduler(solver, steps), cond, bar, held))
            clock = time.perf_counter()
            joined = crossfade_mels(joined, self._decode(latents_out[-1], cond.bf16), start * f)
            decoding += time.perf_counter() - clock
        bar.close()
        joins = [(spans[k - 1][1] - tail) * f for k in range(1, len(spans))]
        return joined, [(s * f, e * f) for s, e in spans], latents_out, joins, decoding

    # -- reporting -------------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        def count(module):
            return sum(p.numel() for p in module.parameters()) if module is not None else 0

        counts = {
            "text encoder": count(self.text_encoder.model),
            "t2i unet": count(self.t2i.unet),
            "t2i vae": count(self.t2i.vae),
        }
        if self.t2i.text_encoder is not None and self.t2i.text_encoder.model is not self.text_encoder.model:
            counts["t2i text encoder"] = count(self.t2i.text_encoder.model)
        counts.update({
            "music unet": count(self.music.unet),
            "visual synapse": count(self.music.synapse) if self.conditioning in READS_SYNAPSE else 0,
            "image encoder": count(self.image_encoder),
            "audio vae": count(self.audio_vae),
            "vocoder": count(self.vocoder),
        })
        return counts

    # -- saving and loading ----------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write every part (JSON configs beside safetensors) into `directory`, atomically."""
        directory = Path(directory)
        with atomic_dir(directory) as staging:
            self.text_encoder.save_pretrained(staging / "text_encoder")
            self.t2i.save_pretrained(staging / "t2i")
            self.audio_vae.save_pretrained(staging / "audio_vae")
            # Saved with diffusers' default processors: the synapse's weights live in synapse/.
            self.music.unet.save_pretrained(str(staging / "unet"))
            self.music.synapse.save_pretrained(staging / "synapse")
            from diffusers import DDIMScheduler

            DDIMScheduler.from_config(self.music.scheduler_config).save_pretrained(str(staging / "scheduler"))
            self.vocoder.save_pretrained(staging / "vocoder")
            components = {c: c for c in COMPONENTS}
            if self.distilled is not None:
                self.distilled.unet.save_pretrained(str(staging / "distilled" / "unet"))
                self.distilled.synapse.save_pretrained(staging / "distilled" / "synapse")
                (staging / "distilled" / DISTILLED_NAME).write_text(json.dumps(self.distilled_config, indent=2))
                components["distilled"] = "distilled"
            if self.image_encoder is not None:
                self.image_encoder.save_pretrained(staging / "image_encoder")
                components["image_encoder"] = "image_encoder"
            index = {"_class_name": "MelFusionPipeline", "preset": self.preset, "mel": self.mel.to_dict(),
                     "conditioning": self.conditioning, "defaults": self.defaults, "components": components}
            (staging / INDEX_NAME).write_text(json.dumps(index, indent=2))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, lean: bool = False) -> "MelFusionPipeline":
        """Load a saved pipeline. Components may point elsewhere (an absolute path, e.g. to a
        Stable Diffusion directory) through `components` in model_index.json.

        `lean`: for inference, the lean runtime's modules (`melfusion.lean`: no diffusers or
        transformers import, weights assigned without initialising) wherever they cover a
        component's config, the libraries' elsewhere; the same function either way. Training
        loads with the libraries' modules (the default)."""
        directory = Path(directory)
        index_file = directory / INDEX_NAME
        if not directory.is_dir():
            raise MelFusionError(f"model directory not found: {directory}")
        if not index_file.is_file():
            raise MelFusionError(f"{directory} is not a melfusion model (no {INDEX_NAME})")
        try:
            index = json.loads(index_file.read_text())
            mel = MelConfig(**index.get("mel", {}))
            paths = {c: directory / index["components"][c] for c in COMPONENTS}
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise MelFusionError(f"malformed {index_file}: {type(exc).__name__}: {exc}") from None
        for name, path in paths.items():
            if not path.exists():
                raise MelFusionError(f"model component {name} not found: {path}")
        with _quiet_diffusers(enabled=not lean):  # diffusers warns about our custom processors otherwise
            from melfusion.lean import load_unet
            from melfusion.text.encoders import load_text_encoder, text_encoder_key

            text_encoder = load_text_encoder(paths["text_encoder"], lean)
            key = text_encoder_key(paths["text_encoder"])
            t2i = TextToImageModel.from_pretrained(paths["t2i"], lean, {key: text_encoder} if key else None)
            audio_vae = AudioVAE.from_pretrained(paths["audio_vae"], lean)
            try:
                # Beside a distilled network the teacher runs only for calls the student does not
                # stand for (other guidance, no picture): its weights wait for its first pass.
                unet = load_unet(paths["unet"], lean, defer="distilled" in index["components"])
                scheduler_config = json.loads((paths["scheduler"] / "scheduler_config.json").read_text())
            except (OSError, ValueError) as exc:
                raise MelFusionError(f"cannot load the music UNet in {directory}: {str(exc).splitlines()[0]}") from None
            synapse = VisualSynapse.from_pretrained(paths["synapse"])
            music = MusicLDM(unet, synapse, scheduler_config)
            vocoder = load_vocoder(paths["vocoder"], mel)
            image_encoder = None
            if "image_encoder" in index["components"]:
                from melfusion.baselines import ImageEncoder

                image_encoder = ImageEncoder.from_pretrained(directory / index["components"]["image_encoder"])
            distilled, distilled_config = None, None
            if "distilled" in index["components"]:
                distilled, distilled_config = _load_distilled(directory / index["components"]["distilled"], lean,
                                                              scheduler_config)
        return cls(text_encoder, t2i, audio_vae, music, vocoder, mel, index.get("defaults"), index.get("preset"),
                   index.get("conditioning", "synapse"), image_encoder, distilled, distilled_config)


def _load_distilled(folder: Path, lean: bool, scheduler_config: dict) -> tuple[MusicLDM, dict]:
    """A model's guidance-distilled music network (its UNet and synapse) and what it stands for."""
    from melfusion.lean import load_unet

    try:
        config = json.loads((folder / DISTILLED_NAME).read_text())
        missing = [k for k in DISTILLED_KEYS if k not in config]
        if missing:
            raise ValueError(f"{DISTILLED_NAME} lacks {', '.join(missing)}")
        unet = load_unet(folder / "unet", lean)
    except (OSError, ValueError) as exc:
        raise MelFusionError(f"cannot load the distilled network in {folder}: {str(exc).splitlines()[0]}") from None
    return MusicLDM(unet, VisualSynapse.from_pretrained(folder / "synapse"), scheduler_config), config
