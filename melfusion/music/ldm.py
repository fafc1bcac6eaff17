"""The music latent diffusion model: a diffusers `UNet2DConditionModel` over the audio latent,
cross-attending to the caption, with the visual synapse in its decoder.

The training loss and one guided denoising prediction live here; the sampling loop is the
pipeline's (`melfusion.pipeline`), which reads like the paper's algorithm.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from melfusion.errors import MelFusionError
from melfusion.music.keys import NO_KEY, has_key, takes_mode
from melfusion.synapse import VisualSynapse

ImageKV = list  # per synapse layer (keys, values), each (batch, tokens, image_dim)


@dataclass
class ConditionDropout:
    """Classifier-free guidance training: drop text and image jointly and separately.

    Each sample independently: with `both` drop text and image, with `text` drop only the
    text, with `image` drop only the image; otherwise keep both.
    """

    text: float = 0.05
    image: float = 0.05
    both: float = 0.1

    def __post_init__(self):
        if min(self.text, self.image, self.both) < 0 or self.text + self.image + self.both > 1:
            raise MelFusionError("condition dropout probabilities must be >= 0 and sum to at most 1")

    def draw(self, batch: int, generator: torch.Generator | None = None):
        """Returns `(keep_text, keep_image)`, two float masks of shape `(batch,)`."""
        u = torch.rand(batch, generator=generator)
        both = u < self.both
        text_only = (u >= self.both) & (u < self.both + self.text)
        image_only = (u >= self.both + self.text) & (u < self.both + self.text + self.image)
        keep_text = ~(both | text_only)
        keep_image = ~(both | image_only)
        return keep_text.float(), keep_image.float()


def sample_timesteps(batch: int, num_train_timesteps: int, high_noise_weight: float = 0.0,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Training timesteps with density proportional to `1 + w * t / T` (uniform at w = 0).

    w > 0 spends more of the training on high noise levels, where a clip's global character
    (its harmony, how busy it is) is decided; at w = 1 the noisiest steps are drawn twice as
    often as the cleanest. Inverse-CDF sampling: F(x) = (x + w x^2 / 2) / (1 + w / 2).
    """
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    w = float(high_noise_weight)
    x = u if w == 0 else (torch.sqrt(1 + 2 * w * u * (1 + w / 2)) - 1) / w
    return (x * num_train_timesteps).long().clamp(0, num_train_timesteps - 1)


def append_image_tokens(text, text_mask, image_tokens, keep_image):
    """Concatenate image tokens after the caption's; a dropped image is zeroed and masked."""
    keep = keep_image.to(image_tokens)[:, None]
    tokens = image_tokens * keep[:, :, None]
    mask = keep.expand(-1, image_tokens.shape[1]).to(text_mask.dtype)
    return torch.cat([text, tokens.to(text)], dim=1), torch.cat([text_mask, mask], dim=1)


class MusicLDM(torch.nn.Module):
    def __init__(self, unet, synapse: VisualSynapse, scheduler_config: dict):
        """`unet`: diffusers' `UNet2DConditionModel` or the lean runtime's (`melfusion.lean.unet`)."""
        super().__init__()
        self.unet = unet
        self.synapse = synapse
        self.scheduler_config = dict(scheduler_config)
        self._noise_scheduler = None
        synapse.attach(unet)

    @property
    def noise_scheduler(self):
        """The training noise schedule (diffusers' DDIM: `add_noise`, `get_velocity`), made on first use."""
        if self._noise_scheduler is None:
            from diffusers import DDIMScheduler

            self._noise_scheduler = DDIMScheduler.from_config(self.scheduler_config)
        return self._noise_scheduler

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    @property
    def takes_key(self) -> bool:
        """Whether the UNet reads the tonic (melfusion.music.keys)."""
        return has_key(self.unet)

    @property
    def takes_mode(self) -> bool:
        """Whether its key label also carries the mode (diagnostic J, melfusion.music.keys)."""
        return takes_mode(self.unet)

    def predict(self, latents, t, text, text_mask, image_kv: ImageKV | None, image_present=None, key=None):
        """One UNet evaluation: `(batch, c, frames, mels)` latent at timestep(s) `t` -> model output.
        `key` (batch,): tonic labels for a UNet that reads them (None: NO_KEY); ignored otherwise."""
        extra = {}
        if self.takes_key:
            if key is None:
                key = torch.full((latents.shape[0],), NO_KEY, dtype=torch.long)
            extra["class_labels"] = key.to(latents.device, torch.long)
        with self.synapse.condition(image_kv, image_present):
            return self.unet(latents, t, encoder_hidden_states=text, encoder_attention_mask=text_mask, **extra).sample

    def training_loss(self, latents: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                      null_text: torch.Tensor, null_mask: torch.Tensor,
                      image_features: Callable[[torch.Tensor], ImageKV] | None,
                      dropout: ConditionDropout = ConditionDropout(),
                      generator: torch.Generator | None = None,
                      timesteps: torch.Tensor | None = None,
                      image_tokens: torch.Tensor | None = None, return_clean: bool = False,
                      key: torch.Tensor | None = None, drop_key: float = 0.0):
        """The diffusion loss for one batch.

        latents: clean audio latents `(batch, c, f, m)`; text, text_mask: caption tokens
        `(batch, tokens, dim)`, `(batch, tokens)`; null_text, null_mask: the empty caption's
        `(1, tokens, dim)`, `(1, tokens)`; image_features(timesteps) returns the image keys and
        values the synapse reads at those music timesteps (None: train text-only).
        image_tokens `(batch, n, dim)`, for the concatenation baselines, join the caption's
        tokens (masked out where the image is dropped). With `return_clean`, returns `(loss, extras)`
        for an auxiliary loss on what the model predicts: `extras` holds the predicted clean
        latent ("clean"), the timesteps, and the masks of the kept caption and image
        ("keep_text", "keep_image").
        """
        b = latents.shape[0]
        if timesteps is None:
            timesteps = torch.randint(0, self.num_train_timesteps, (b,), generator=generator)
        timesteps = timesteps.to(latents.device)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        keep_text, keep_image = dropout.draw(b, generator)
        kt = keep_text.to(latents)[:, None, None]
        text = kt * text + (1 - kt) * null_text.to(latents)
        text_mask = torch.where(keep_text.bool()[:, None].to(text_mask.device), text_mask, null_mask)
        if image_tokens is not None:
            text, text_mask = append_image_tokens(text, text_mask, image_tokens, keep_image)
        image_kv = image_features(timesteps) if image_features is not None else None
        if key is not None and drop_key:
            dropped = torch.rand(b, generator=generator) < drop_key
            key = torch.where(dropped, torch.full_like(key, NO_KEY), key)
        output = self.predict(noisy, timesteps, text, text_mask, image_kv, keep_image, key)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise MelFusionError(f"unsupported prediction type {self.prediction_type!r}")
        loss = F.mse_loss(output.float(), target.float())
        if not return_clean:
            return loss
        return loss, {"clean": self.predicted_clean(noisy, output.float(), timesteps), "timesteps": timesteps,
                      "keep_text": keep_text, "keep_image": keep_image}

    def predicted_clean(self, noisy: torch.Tensor, output: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The clean latent the model's output implies at `timesteps` (v: sqrt(a) x - sqrt(1-a) v)."""
        a = self.noise_scheduler.alphas_cumprod.to(noisy.device)[timesteps].float().view(-1, 1, 1, 1)
        if self.prediction_type == "v_prediction":
            return a.sqrt() * noisy - (1 - a).sqrt() * output
        return (noisy - (1 - a).sqrt() * output) / a.sqrt()
