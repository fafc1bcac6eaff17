"""`MelFusionPipeline`: an image and a caption in, a waveform out, by the paper's algorithm.

    pipe = MelFusionPipeline.from_pretrained("path/to/model")
    out = pipe(image="cover.png", prompt="lo-fi hip-hop with a dusty piano", duration_s=10,
               generator=torch.Generator().manual_seed(0))
    out.audio, out.sample_rate
"""
from __future__ import annotations

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
from melfusion.music.ldm import MusicLDM
from melfusion.schedulers import SOLVERS, make_scheduler
from melfusion.synapse import VisualSynapse
from melfusion.t2i.model import ImageTrajectory, TextToImageModel
from melfusion.text.encoders import TextEncoder

INDEX_NAME = "model_index.json"
MAX_CAPTION_CHARS = 1000
MIN_DURATION_S, MAX_DURATION_S = 1.0, 30.0
COMPONENTS = ("text_encoder", "t2i", "audio_vae", "unet", "synapse", "scheduler", "vocoder")
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


def check_duration(duration_s: float) -> float:
    if not isinstance(duration_s, (int, float)) or not math.isfinite(duration_s) \
            or not MIN_DURATION_S <= duration_s <= MAX_DURATION_S:
        raise MelFusionError(f"duration must be between {MIN_DURATION_S:g} and {MAX_DURATION_S:g} seconds, "
                             f"got {duration_s}")
    return float(duration_s)


class MelFusionPipeline:
    def __init__(self, text_encoder: TextEncoder, t2i: TextToImageModel, audio_vae: AudioVAE, music: MusicLDM,
                 vocoder: Vocoder, mel: MelConfig = MelConfig(), defaults: dict | None = None,
                 preset: str | None = None, conditioning: str = "synapse", image_encoder=None):
        self.text_encoder, self.t2i, self.audio_vae = text_encoder, t2i, audio_vae
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

    @torch.no_grad()
    def __call__(self, image, prompt, duration_s: float | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None, inversion_steps: int | None = None,
                 progress: bool = True, image_guidance_scale: float | None = None, solver: str | None = None,
                 precision: str | None = None) -> MelFusionOutput:
        """`solver`: "ddim" (the paper's), "dpm++2m" or "unipc". `precision`: "fp32", "bf16" (the
        UNets under bfloat16 autocast) or "auto" (bf16 where this CPU has bfloat16 arithmetic);
        both default to the model's saved choice. The image inversion always runs the DDIM steps
        the model was trained on."""
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
        if self.conditioning == "text" or image_guidance == guidance:
            image_guidance = None  # the same as plain guidance (or nothing to guide: no image is read)
        solver = d.get("solver") or "ddim" if solver is None else solver
        if solver not in SOLVERS:
            raise MelFusionError(f"unknown solver {solver!r}: choose one of {', '.join(SOLVERS)}")
        bf16 = use_bf16(d.get("precision") or "fp32" if precision is None else precision)
        single = isinstance(prompt, str)
        prompts = [check_prompt(p) for p in ([prompt] if single else list(prompt))]
        images = [image] if single or not isinstance(image, (list, tuple)) else list(image)
        if len(images) != len(prompts):
            raise MelFusionError(f"{len(images)} images for {len(prompts)} captions")
        pixels = self.prepare_images(images)
        timings, clock = {}, time.perf_counter()

        # 1. Encode the caption (and the empty caption for classifier-free guidance).
        text, mask, null_text, null_mask = self.encode_prompt(prompts)
        timings["text"] = time.perf_counter() - clock

        # 2. Encode the image and DDIM-invert it with the frozen T2I model, keeping its features.
        #    (The baselines read the image with their image encoder instead.)
        clock = time.perf_counter()
        trajectory, image_kv, image_tokens = None, None, None
        if self.conditioning == "synapse":
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                trajectory = self.invert_image(pixels, inv_steps, progress)
        elif self.conditioning != "text":
            image_tokens = self.image_encoder(pixels)
            if self.conditioning == "image-encoder":
                from melfusion.baselines import encoder_kv

                image_kv = encoder_kv(image_tokens, self.text_encoder.max_length, len(self.music.synapse.layers))
        timings["inversion"] = time.perf_counter() - clock

        # 3. Start from noise in the audio latent space.
        clock = time.perf_counter()
        b = len(prompts)
        frames = self.frames_for(duration_s)
        f = self.audio_vae.factor
        shape = (b, self.audio_vae.latent_channels, frames // f, self.mel.n_mels // f)
        if isinstance(generator, (list, tuple)):
            # One generator per clip: a clip's noise is the same whatever batch it is made in.
            if len(generator) != b:
                raise MelFusionError(f"{len(generator)} generators for {b} captions")
            latents = torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in generator])
        else:
            latents = torch.randn(shape, generator=generator)
        scheduler = make_scheduler(solver, self.music.scheduler_config)
        scheduler.set_timesteps(steps)
        latents = latents * scheduler.init_noise_sigma
        # Classifier-free guidance. Unconditional: empty caption and the null image. With a
        # separate image scale a third pass, caption with the null image, splits the two terms:
        # e = e(-,-) + g (e(T,-) - e(-,-)) + g_img (e(T,I) - e(T,-)); the caption has the same
        # weight in e(T,-) as in e(T,I), so the image term adds the picture and nothing else.
        guided = guidance != 1.0 or image_guidance is not None
        if image_guidance is not None:
            passes = [(null_text.expand(b, -1, -1), null_mask.expand(b, -1), 0.0), (text, mask, 0.0), (text, mask, 1.0)]
        elif guided:
            passes = [(null_text.expand(b, -1, -1), null_mask.expand(b, -1), 0.0), (text, mask, 1.0)]
        else:
            passes = [(text, mask, 1.0)]
        n_pass = len(passes)
        context = torch.cat([p[0] for p in passes])
        context_mask = torch.cat([p[1] for p in passes])
        present = torch.cat([torch.full((b,), p[2]) for p in passes])
        if image_tokens is not None and self.conditioning in TOKENS_IN_CAPTION:
            from melfusion.music.ldm import append_image_tokens

            context, context_mask = append_image_tokens(context, context_mask, image_tokens.repeat(n_pass, 1, 1),
                                                        present)

        # 4. Denoise; at step t the synapse reads the image at the matching inverted step.
        for t in tqdm(scheduler.timesteps, desc="composing", disable=not progress, leave=False):
            kv = self.image_features(trajectory, int(t)) if trajectory is not None else image_kv
            if n_pass > 1 and kv is not None:
                kv = [(k.repeat(n_pass, *[1] * (k.dim() - 1)), v.repeat(n_pass, *[1] * (v.dim() - 1))) for k, v in kv]
            model_in = latents.repeat(n_pass, *[1] * (latents.dim() - 1))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = self.music.predict(scheduler.scale_model_input(model_in, t), t, context, context_mask, kv,
                                         present).float()
            if n_pass == 3:
                uncond, text_only, full = out.chunk(3)
                out = uncond + guidance * (text_only - uncond) + image_guidance * (full - text_only)
            elif n_pass == 2:
                uncond, cond = out.chunk(2)
                out = uncond + guidance * (cond - uncond)
            latents = scheduler.step(out, t, latents).prev_sample
        timings["denoising"] = time.perf_counter() - clock

        # 5. Decode the latent to a log-mel and vocode it.
        clock = time.perf_counter()
        log_mel = self.audio_vae.decode(latents)
        wave = self.vocoder(log_mel)[:, : int(round(duration_s * self.sample_rate))]
        timings["vocoding"] = time.perf_counter() - clock
        audio = wave.cpu().numpy().astype(np.float32)
        return MelFusionOutput(audio[0] if single else audio, self.sample_rate, log_mel, timings)

    # -- reporting -------------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        def count(module):
            return sum(p.numel() for p in module.parameters()) if module is not None else 0

        counts = {
            "text encoder": count(self.text_encoder.model),
            "t2i unet": count(self.t2i.unet),
            "t2i vae": count(self.t2i.vae),
        }
        if self.t2i.text_encoder is not None and self.t2i.text_encoder is not self.text_encoder:
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
            from melfusion.t2i.model import load_text_encoder, load_unet, text_encoder_key

            text_encoder = load_text_encoder(paths["text_encoder"], lean)
            key = text_encoder_key(paths["text_encoder"])
            t2i = TextToImageModel.from_pretrained(paths["t2i"], lean, {key: text_encoder} if key else None)
            audio_vae = AudioVAE.from_pretrained(paths["audio_vae"], lean)
            try:
                unet = load_unet(paths["unet"], lean)
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
        return cls(text_encoder, t2i, audio_vae, music, vocoder, mel, index.get("defaults"), index.get("preset"),
                   index.get("conditioning", "synapse"), image_encoder)
