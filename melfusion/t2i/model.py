"""The frozen text-to-image side: encode an image, DDIM-invert it, read its decoder keys/values.

`TextToImageModel` wraps any diffusers `UNet2DConditionModel` with its `AutoencoderKL`,
scheduler config and text encoder, in Stable Diffusion's directory layout (`unet/`, `vae/`,
`scheduler/`, `text_encoder/`, `tokenizer/`). Nothing here is trained: all weights are frozen
and every call runs without gradients.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from melfusion.errors import MelFusionError
from melfusion.lean import load_unet, load_vae
from melfusion.schedulers import make_scheduler
from melfusion.t2i.capture import KVCaptureProcessor, KVStore, decoder_self_attention_names
from melfusion.text.encoders import TextEncoder, load_text_encoder, shared_text_encoder, text_encoder_key


@dataclass
class ImageTrajectory:
    """A DDIM inversion: `latents[i]` is the image latent at noise level `timesteps[i]`.

    `latents` is `(steps + 1, batch, channels, h, w)`; `timesteps[0]` is -1 (the clean latent).
    `features[i]` (i >= 1), when kept, holds per captured layer `(keys, values)` of shape
    `(batch, tokens, inner)`, read from the T2I UNet at `timesteps[i]` on the latent
    `latents[i - feature_offset]`: on `latents[i]` itself for a refined inversion, on the
    previous latent (the evaluation that produced `latents[i]`) for plain DDIM inversion.
    """

    latents: torch.Tensor
    timesteps: list[int]
    num_train_timesteps: int
    features: list | None = None
    feature_offset: int = 1

    def index_for(self, fraction: float) -> int:
        """The inverted step whose noise level, as a fraction of the schedule, is nearest `fraction`."""
        levels = np.array(self.timesteps[1:], dtype=np.float64) / self.num_train_timesteps
        return 1 + int(np.argmin(np.abs(levels - fraction)))


class TextToImageModel(torch.nn.Module):
    def __init__(self, unet, vae, scheduler_config: dict, text_encoder: TextEncoder | None,
                 image_size: int | None = None):
        """`unet`, `vae`: diffusers' `UNet2DConditionModel` and `AutoencoderKL`, or the lean runtime's."""
        super().__init__()
        self.unet = unet.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder
        self.scheduler_config = dict(scheduler_config)
        vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        sample = unet.config.sample_size
        sample = sample[0] if isinstance(sample, (list, tuple)) else sample
        self.image_size = int(image_size or sample * vae_factor)
        self.layer_names = decoder_self_attention_names(unet)
        self.store = KVStore(len(self.layer_names))
        processors = dict(unet.attn_processors)
        for i, name in enumerate(self.layer_names):
            processors[name] = KVCaptureProcessor(self.store, i)
        unet.set_attn_processor(processors)
        self._null_embedding: torch.Tensor | None = None

    @property
    def layer_dims(self) -> list[int]:
        modules = dict(self.unet.named_modules())
        return [modules[n.removesuffix(".processor")].to_k.out_features for n in self.layer_names]

    # -- the image side of the algorithm -------------------------------------------------------
    def null_embedding(self, batch: int) -> torch.Tensor:
        """The empty prompt's embedding: inversion runs unconditioned, as the paper's does."""
        if self._null_embedding is None:
            if self.text_encoder is None:
                raise MelFusionError("the text-to-image model has no text encoder to embed the empty prompt")
            self._null_embedding = self.text_encoder.encode([""])[0]
        return self._null_embedding.expand(batch, -1, -1)

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """`(batch, 3, H, W)` in [0, 1] -> scaled VAE latent mean `(batch, c, h, w)`."""
        with torch.autocast("cpu", enabled=False):  # the encoder runs once: fp32 under any autocast
            dist = self.vae.encode(pixels.float() * 2 - 1).latent_dist
        return dist.mean * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        img = self.vae.decode(latent / self.vae.config.scaling_factor).sample
        return ((img + 1) / 2).clamp(0, 1)

    def _unet(self, latent, t, context, capture_tokens: int | None):
        if capture_tokens is not None:
            self.store.start(capture_tokens)
        noise = self.unet(latent, t, encoder_hidden_states=context).sample.float()
        kv = self.store.stop() if capture_tokens is not None else None
        if kv is not None and kv[0][0].dtype != torch.float32:  # under bf16 autocast
            kv = [(k.float(), v.float()) for k, v in kv]
        return noise, kv

    @torch.no_grad()
    def invert(self, latent: torch.Tensor, num_steps: int, capture_tokens: int | None = None,
               refine_iters: int = 0, progress=None) -> ImageTrajectory:
        """DDIM inversion from the clean latent towards noise with `DDIMInverseScheduler`.

        Plain DDIM inversion predicts the noise for the step t-1 -> t on the latent at t-1,
        where sampling will predict it on the latent at t; the mismatch grows with how fast
        the UNet's output changes with its input. `refine_iters` > 0 solves each step's
        implicit equation z_t = step(eps(z_t, t), z_{t-1}) by fixed-point iteration, so that
        DDIM sampling retraces the trajectory (each iteration costs one more UNet pass).

        With `capture_tokens`, the decoder self-attention keys/values of every step are kept,
        pooled to that many tokens: the features the music model reads at the matching step.
        """
        scheduler = make_scheduler("ddim-inverse", self.scheduler_config)
        scheduler.set_timesteps(num_steps)
        context = self.null_embedding(latent.shape[0])
        latents, steps, features = [latent], [-1], [None]
        for t in scheduler.timesteps:
            noise, kv = self._unet(latents[-1], t, context, capture_tokens)
            nxt = scheduler.step(noise, t, latents[-1]).prev_sample
            for _ in range(refine_iters):
                noise, kv = self._unet(nxt, t, context, capture_tokens)
                nxt = scheduler.step(noise, t, latents[-1]).prev_sample
            latents.append(nxt)
            steps.append(int(t))
            features.append(kv)
            if progress is not None:
                progress()
        return ImageTrajectory(torch.stack(latents), steps, scheduler.config.num_train_timesteps,
                               features if capture_tokens is not None else None,
                               feature_offset=0 if refine_iters > 0 else 1)

    @torch.no_grad()
    def sample_from(self, latent: torch.Tensor, num_steps: int) -> torch.Tensor:
        """Plain DDIM sampling (null prompt, no guidance) from a noisy latent back to a clean one."""
        scheduler = make_scheduler("ddim", self.scheduler_config)
        scheduler.set_timesteps(num_steps)
        context = self.null_embedding(latent.shape[0])
        for t in scheduler.timesteps:
            noise, _ = self._unet(latent, t, context, None)
            latent = scheduler.step(noise, t, latent).prev_sample
        return latent

    @torch.no_grad()
    def features(self, latents: torch.Tensor, timesteps: torch.Tensor, num_tokens: int):
        """Keys/values read from one T2I UNet pass over `latents` at per-sample `timesteps`."""
        _, kv = self._unet(latents, timesteps, self.null_embedding(latents.shape[0]), num_tokens)
        return kv

    # -- saving and loading (Stable Diffusion's layout) ------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        # Capture processors hold no weights; the UNet saves with its plain config.
        self.unet.save_pretrained(str(directory / "unet"))
        self.vae.save_pretrained(str(directory / "vae"))
        from diffusers import DDIMScheduler

        DDIMScheduler.from_config(self.scheduler_config).save_pretrained(str(directory / "scheduler"))
        if self.text_encoder is not None:
            self.text_encoder.save_pretrained(directory / "text_encoder")

    @classmethod
    def from_pretrained(cls, directory: str | Path, lean: bool = False,
                        text_encoders: dict | None = None) -> "TextToImageModel":
        """`lean`: the lean runtime's UNet and VAE where they cover the configs (no diffusers
        import). `text_encoders`: encoders already loaded, by `text_encoder_key`; one that reads
        the same weights is shared (at this model's caption length) instead of loaded twice."""
        directory = Path(directory)
        for part in ("unet", "vae", "scheduler", "text_encoder"):
            if not (directory / part).is_dir():
                raise MelFusionError(f"{directory} is not a text-to-image model in Stable Diffusion's layout "
                                     f"(no {part}/ folder)")
        try:
            unet = load_unet(directory / "unet", lean)
            vae = load_vae(directory / "vae", lean)
            sched_file = directory / "scheduler" / "scheduler_config.json"
            scheduler_config = json.loads(sched_file.read_text())
        except (OSError, ValueError, json.JSONDecodeError) as exc:
            raise MelFusionError(f"cannot load the text-to-image model in {directory}: "
                                 f"{str(exc).splitlines()[0]}") from None
        text_encoder = shared_text_encoder(text_encoder_key(directory / "text_encoder"), text_encoders)
        if text_encoder is None:
            text_encoder = load_text_encoder(directory / "text_encoder", lean)
        return cls(unet, vae, scheduler_config, text_encoder)
