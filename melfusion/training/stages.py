"""What each training stage trains, on what, with which loss.

A stage is a `torch.nn.Module` whose `forward(indices, generator)` returns the loss of one
batch (so accelerate's DistributedDataParallel wraps it whole), built over in-memory tensors
from the caches. `trainable()` names the parameters the optimiser sees; `export(pipe)` puts
the trained weights back into a pipeline for saving.

Stages, in the order the `small` recipe runs them:
- `audio_vae`: the audio VAE on log-mel crops (L1 reconstruction + a small KL);
- `image_vae`: the T2I model's VAE on the images;
- `t2i`: the T2I UNet on image latents, conditioned on scene descriptions;
- `music`: the music UNet and the visual synapse (or a baseline's conditioning).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from melfusion.music.ldm import ConditionDropout, sample_timesteps
from melfusion.pipeline import NEEDS_IMAGE_ENCODER, READS_SYNAPSE, TOKENS_IN_CAPTION
from melfusion.t2i.model import ImageTrajectory
from melfusion.training import caches
from melfusion.training.config import TrainConfig

VAL_TIMESTEPS = (50, 250, 500, 750, 950)


def scene_description(record: dict) -> str:
    """The T2I model's caption for a SynthMeL image: what it depicts, never the music labels."""
    kind = str(record.get("image_kind", "image")).replace("_", " ")
    scene = str(record.get("scene", "")).replace("_", " ")
    return f"a {kind} of {scene}".strip() if scene else record["caption"]


class Stage(torch.nn.Module):
    def __init__(self, cfg: TrainConfig, pipe):
        super().__init__()
        self.cfg = cfg
        self.pipe = pipe

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def log_values(self) -> dict[str, float]:
        return {}


class VAEStage(Stage):
    """An AutoencoderKL on crops: `audio_vae` over mels `(1, crop, mels)`, `image_vae` over images."""

    def __init__(self, cfg, pipe, data):
        super().__init__(cfg, pipe)
        self.vae = pipe.audio_vae.vae if cfg.stage == "audio_vae" else pipe.t2i.vae
        self.vae.train().requires_grad_(True)
        self.data = data

    def _inputs(self, split, idx, generator):
        x = self.data[split][idx]
        if self.cfg.stage == "audio_vae":
            frames = x.shape[1]
            crop = min(self.cfg.crop_frames or 256, frames)
            starts = torch.randint(0, frames - crop + 1, (len(idx),), generator=generator)
            x = torch.stack([x[i, s:s + crop] for i, s in enumerate(starts.tolist())])[:, None]
        else:
            x = x * 2 - 1
        return x

    def forward(self, idx, generator):
        x = self._inputs("train", idx, generator)
        dist = self.vae.encode(x).latent_dist
        recon = self.vae.decode(dist.sample(generator)).sample
        kl = dist.kl().mean() / x[0].numel()
        return F.l1_loss(recon, x) + self.cfg.kl_weight * kl

    @torch.no_grad()
    def val_loss(self, idx):
        g = torch.Generator().manual_seed(0)
        x = self._inputs("val", idx, g)
        return F.l1_loss(self.vae.decode(self.vae.encode(x).latent_dist.mean).sample, x).item()

    def export(self, pipe):
        # Keep the latents at about unit spread, as Stable Diffusion's scaling factor does.
        with torch.no_grad():
            idx = torch.arange(min(64, len(self.data["train"])))
            std = float(self.vae.encode(self._inputs("train", idx, torch.Generator().manual_seed(0))).latent_dist.mean.std())
        self.vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
        self.vae.eval().requires_grad_(False)


class T2IStage(Stage):
    """The T2I UNet learns to denoise image latents given scene descriptions."""

    def __init__(self, cfg, pipe, data):
        super().__init__(cfg, pipe)
        from diffusers import DDPMScheduler

        self.unet = pipe.t2i.unet
        self.unet.train().requires_grad_(True)
        self.data = data
        self.noise = DDPMScheduler.from_config(pipe.t2i.scheduler_config)
        self.dropout = ConditionDropout(text=0.1, image=0.0, both=0.0)

    def _loss(self, split, idx, generator, timesteps=None):
        z = self.data[split + "_latents"][idx]
        # Unmasked, as Stable Diffusion conditions (and as the inversion's empty prompt is read).
        text = self.data[split + "_text"][idx]
        if timesteps is None:
            timesteps = torch.randint(0, self.noise.config.num_train_timesteps, (len(idx),), generator=generator)
        noise = torch.randn(z.shape, generator=generator)
        keep, _ = self.dropout.draw(len(idx), generator)
        k = keep[:, None, None]
        text = k * text + (1 - k) * self.data["null_text"]
        noisy = self.noise.add_noise(z, noise, timesteps)
        pred = self.unet(noisy, timesteps, encoder_hidden_states=text).sample
        return F.mse_loss(pred, noise)

    def forward(self, idx, generator):
        return self._loss("train", idx, generator)

    @torch.no_grad()
    def val_loss(self, idx):
        losses = [self._loss("val", idx, torch.Generator().manual_seed(i), torch.full((len(idx),), t))
                  for i, t in enumerate(VAL_TIMESTEPS)]
        return float(sum(losses) / len(losses))

    def export(self, pipe):
        self.unet.eval().requires_grad_(False)


class MusicStage(Stage):
    """The music UNet and the visual synapse, or a baseline's way of reading the image
    (`conditioning`: text, concat, tangopp, image-encoder; see melfusion.baselines)."""

    def __init__(self, cfg, pipe, data):
        super().__init__(cfg, pipe)
        self.music = pipe.music
        self.music.unet.train().requires_grad_(True)
        synapse = self.music.synapse
        uses_synapse = cfg.conditioning in READS_SYNAPSE
        synapse.requires_grad_(uses_synapse)
        # Text only, the synapse layers still run, on the null image: the same network as
        # MeLFusion without a picture, so either can be fine-tuned from the other's checkpoint.
        synapse.config.enabled = uses_synapse or (cfg.conditioning == "text" and synapse.config.absent == "null-image")
        self.image_encoder = pipe.image_encoder
        if self.image_encoder is not None:
            self.image_encoder.train().requires_grad_(True)
        self.data = data
        self.dropout = ConditionDropout(cfg.drop_text, cfg.drop_image, cfg.drop_both)
        self.latent_crop = (cfg.crop_frames // pipe.audio_vae.factor) if cfg.crop_frames else None
        self.harmony = None
        self._harmony_value = None
        if cfg.harmony_weight:
            from melfusion.music.harmony import HarmonyLoss

            self.harmony = HarmonyLoss(pipe.audio_vae, pipe.mel)
        self.reader_loss = None
        self._reader_value = None
        if cfg.reader_weight:
            from melfusion.music.reader import LatentReader, ReaderLoss

            self.reader_loss = ReaderLoss(LatentReader.load(cfg.reader), cfg.reader_heads)
        if cfg.conditioning == "synapse" and not synapse.config.standardize:
            self._measure_image_statistics()

    @torch.no_grad()
    def _measure_image_statistics(self, records: int = 512, batch: int = 64):
        """The synapse's image statistics, from the first training records' inversion trajectories."""
        traj = self.data["train_traj"][:records]  # (records, steps + 1, c, h, w)
        timesteps = self.data["traj_timesteps"].tolist()
        offset = int(self.data["traj_offset"])
        pipe = self.pipe

        def features_at(i):
            step = i + 1  # trajectory index; 0 is the clean latent
            parts = []
            for s in range(0, len(traj), batch):
                z = traj[s:s + batch, step - offset]
                kv = pipe.t2i.features(z, torch.full((len(z),), timesteps[step]), pipe.text_encoder.max_length)
                parts.append(pipe.synapse_inputs(kv))
            return [(torch.cat([p[j][0] for p in parts]), torch.cat([p[j][1] for p in parts]))
                    for j in range(len(parts[0]))]

        self.music.synapse.set_statistics(timesteps[1:], features_at)

    def _features(self, split, idx, image_tokens=None):
        if self.cfg.conditioning == "image-encoder":
            from melfusion.baselines import encoder_kv

            kv = encoder_kv(image_tokens, self.pipe.text_encoder.max_length, len(self.music.synapse.layers))
            return lambda t: kv
        if self.cfg.conditioning != "synapse":
            return None
        traj = ImageTrajectory(self.data[split + "_traj"][idx].transpose(0, 1),
                               self.data["traj_timesteps"].tolist(),
                               int(self.pipe.t2i.scheduler_config.get("num_train_timesteps", 1000)),
                               feature_offset=int(self.data["traj_offset"]))
        return lambda t: self.pipe.image_features_for_training(traj, t)

    def _loss(self, split, idx, generator, timesteps=None, dropout=None):
        text, mask = self.data[split + "_text"][idx], self.data[split + "_mask"][idx]
        latents = self.data[split + "_latents"][idx]
        harmony = self.harmony is not None and split == "train"
        read = self.reader_loss is not None and split == "train"
        profiles = self.data[split + "_pitch"][idx[:self.cfg.harmony_batch]] if harmony else None
        if split == "train" and self.latent_crop is not None:
            frames = latents.shape[2]
            starts = torch.randint(0, frames - self.latent_crop + 1, (len(idx),), generator=generator)
            latents = torch.stack([z[:, s:s + self.latent_crop] for z, s in zip(latents, starts.tolist())])
            if harmony:
                profiles = torch.stack([p[s:s + self.latent_crop] for p, s in zip(profiles, starts.tolist())])
        if timesteps is None and self.cfg.high_noise_weight:
            timesteps = sample_timesteps(len(idx), self.music.num_train_timesteps, self.cfg.high_noise_weight,
                                         generator)
        tokens = self.image_encoder(self.data[split + "_images"][idx]) if self.image_encoder is not None else None
        loss = self.music.training_loss(
            latents, text, mask, self.data["null_text"], self.data["null_mask"],
            self._features(split, idx, tokens), dropout or self.dropout, generator, timesteps,
            image_tokens=tokens if self.cfg.conditioning in TOKENS_IN_CAPTION else None,
            return_clean=harmony or read, key=self.data[split + "_key"][idx] if split + "_key" in self.data else None,
            drop_key=self.cfg.drop_key if split == "train" else 0.0)
        if harmony or read:
            loss, extras = loss
            clean = extras["clean"]
        if harmony:
            h = self.harmony(clean[:len(profiles)], profiles.sum(dim=1))
            self._harmony_value = float(h.detach())
            loss = loss + self.cfg.harmony_weight * h
        if read:
            # The labels are the caption's to give when it is the condition, the picture's otherwise.
            keep = extras["keep_text"] if self.cfg.conditioning == "text" else extras["keep_image"]
            signal = self.music.noise_scheduler.alphas_cumprod[extras["timesteps"].cpu()].float()
            r = self.reader_loss(clean, self.data[split + "_labels"][idx], keep.float() * signal)
            self._reader_value = float(r.detach())
            loss = loss + self.cfg.reader_weight * r
        if self.cfg.conditioning == "tangopp":
            loss = loss + self.cfg.itc_weight * self.image_encoder.itc_loss(tokens, text, mask)
        return loss

    def forward(self, idx, generator):
        return self._loss("train", idx, generator)

    @torch.no_grad()
    def val_loss(self, idx):
        none = ConditionDropout(0.0, 0.0, 0.0)
        losses = [self._loss("val", idx, torch.Generator().manual_seed(i), torch.full((len(idx),), t), none)
                  for i, t in enumerate(VAL_TIMESTEPS)]
        return float(sum(losses) / len(losses))

    def log_values(self):
        values = {} if self._harmony_value is None else {"harmony": self._harmony_value}
        if self._reader_value is not None:
            values["reader"] = self._reader_value
        if self.cfg.conditioning in READS_SYNAPSE:
            values.update({f"alpha_{i}": a for i, a in enumerate(self.music.synapse.alphas())})
        return values

    def export(self, pipe):
        self.music.unet.eval().requires_grad_(False)
        self.music.synapse.requires_grad_(False)
        self.music.synapse.config.enabled = True
        if self.cfg.conditioning == "synapse":
            # Sampling inverts the image with the step count the trajectories were cached with.
            pipe.defaults["inversion_steps"] = len(self.data["traj_timesteps"]) - 1
        if self.image_encoder is not None:
            self.image_encoder.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------
# Data for each stage, from the caches.

def stage_data(cfg: TrainConfig, pipe, train, val, cache_dir, progress=True) -> dict[str, torch.Tensor]:
    """In-memory tensors for the stage: `train*` and `val*` entries, one row per record."""
    from pathlib import Path

    cache_dir = Path(cache_dir) if cache_dir else None
    rows = {"train": train, "val": val}
    out: dict[str, torch.Tensor] = {}
    mel_cfg = pipe.mel
    frames = pipe.frames_for(cfg.clip_seconds)

    def mels(split):
        key = caches.digest(caches.record_key(rows[split]), mel_cfg.to_dict(), frames)
        return caches.cached(cache_dir, "mels", key,
                             lambda: {"mels": caches.build_mels(rows[split], mel_cfg, frames, progress)})["mels"]

    def images(split):
        size = pipe.t2i.image_size
        key = caches.digest(caches.record_key(rows[split]), size)
        return caches.cached(cache_dir, "images", key,
                             lambda: {"images": caches.build_images(rows[split], size, progress)})["images"]

    def text(split, texts, encoder):
        key = caches.digest(texts, encoder.max_length, encoder.model)
        return caches.cached(cache_dir, "text", key, lambda: caches.build_text(texts, encoder, progress=progress))

    if cfg.stage == "audio_vae":
        out["train"], out["val"] = mels("train"), mels("val")
    elif cfg.stage == "image_vae":
        out["train"], out["val"] = images("train"), images("val")
    elif cfg.stage == "t2i":
        enc = pipe.t2i.text_encoder
        for split in rows:
            px = images(split)
            key = caches.digest(caches.record_key(rows[split]), pipe.t2i.vae)
            out[split + "_latents"] = caches.cached(
                cache_dir, "image_latents", key,
                lambda: {"z": torch.cat([pipe.t2i.encode_image(px[i:i + 64]) for i in range(0, len(px), 64)])})["z"]
            t = text(split, [scene_description(e.record) for e in rows[split]], enc)
            out[split + "_text"], out[split + "_mask"] = t["emb"], t["mask"]
        out["null_text"] = enc.encode([""])[0]
    else:
        enc = pipe.text_encoder
        steps = cfg.inversion_steps or pipe.defaults.get("inversion_steps") or pipe.defaults["num_inference_steps"]
        for split in rows:
            m = mels(split)
            key = caches.digest(caches.record_key(rows[split]), frames, pipe.audio_vae)
            out[split + "_latents"] = caches.cached(
                cache_dir, "audio_latents", key,
                lambda: {"z": caches.build_audio_latents(m, pipe.audio_vae, progress=progress)})["z"]
            t = text(split, [e.record["caption"] for e in rows[split]], enc)
            out[split + "_text"], out[split + "_mask"] = t["emb"], t["mask"]
            if pipe.music.takes_key:
                from melfusion.music.keys import record_tonic

                out[split + "_key"] = torch.tensor([record_tonic(e.record, with_mode=pipe.music.takes_mode)
                                                    for e in rows[split]], dtype=torch.long)
            if cfg.harmony_weight and split == "train":
                from melfusion.music.harmony import latent_frame_profiles, pitch_class_map

                out["train_pitch"] = latent_frame_profiles(m, pitch_class_map(mel_cfg), pipe.audio_vae.factor)
            if cfg.reader_weight and split == "train":
                from melfusion.music.reader import label_tensor, saved_heads

                heads = cfg.reader_heads or saved_heads(cfg.reader)
                out["train_labels"] = label_tensor([e.record for e in rows[split]], heads)
            if cfg.conditioning in NEEDS_IMAGE_ENCODER:
                out[split + "_images"] = images(split)
            if cfg.conditioning == "synapse":
                px = images(split)
                refine = int(pipe.defaults.get("inversion_refine") or 0)
                key = caches.digest(caches.record_key(rows[split]), steps, refine, pipe.t2i.unet, pipe.t2i.vae)
                traj = caches.cached(cache_dir, "trajectories", key,
                                     lambda: caches.build_trajectories(px, pipe.t2i, steps, refine, progress=progress))
                out[split + "_traj"] = traj["latents"]
                out["traj_timesteps"], out["traj_offset"] = traj["timesteps"], traj["feature_offset"]
        null_text, null_mask = enc.encode([""])
        out["null_text"], out["null_mask"] = null_text, null_mask
    for name, t in out.items():
        if t.is_floating_point():
            caches.check_finite(name, t)
    return out


def make_stage(cfg: TrainConfig, pipe, data) -> Stage:
    if cfg.stage in ("audio_vae", "image_vae"):
        return VAEStage(cfg, pipe, data)
    if cfg.stage == "t2i":
        return T2IStage(cfg, pipe, data)
    return MusicStage(cfg, pipe, data)
