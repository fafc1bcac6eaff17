"""The three scales of one code path: `tiny` (tests), `small` (the embedded default), `paper`.

Each preset is plain values: the constructor arguments of every part. `build(name)` makes a
`MelFusionPipeline` with fresh weights from them (the `paper` preset on the meta device, so its
size can be reported without memory). Real checkpoints are loaded with
`MelFusionPipeline.from_pretrained` instead.
"""
from __future__ import annotations

import copy

from melfusion.errors import MelFusionError

# ---------------------------------------------------------------------------------------------
# Part configurations. UNet and VAE entries are diffusers constructor arguments.

SD15_UNET = dict(  # Stable Diffusion v1.5 (859.5M parameters)
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    scaling_factor=0.18215,
)
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
TANGO_UNET = dict(  # TANGO's music UNet: SD's shape over an 8-channel audio latent, FLAN-T5-large context
    sample_size=(256, 16), in_channels=8, out_channels=8, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=1024, attention_head_dim=8,
)
AUDIOLDM_VAE = dict(
    in_channels=1, out_channels=1, latent_channels=8, layers_per_block=2, sample_size=256,
    block_out_channels=(128, 256, 512),
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    scaling_factor=0.9227,
)
MUSIC_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                       beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                       steps_offset=1, prediction_type="v_prediction")
AUDIOLDM_HIFIGAN = dict(
    model_in_dim=64, sampling_rate=16000, upsample_initial_channel=1024,
    upsample_rates=[5, 4, 2, 2, 2], upsample_kernel_sizes=[16, 16, 8, 4, 4],
    resblock_kernel_sizes=[3, 7, 11], resblock_dilation_sizes=[[1, 3, 5]] * 3, normalize_before=False,
)

PRESETS = {
    "tiny": dict(
        text=dict(kind="toy-t5", max_length=16, d_model=32),
        t2i=dict(
            text=dict(kind="toy-t5", max_length=16, d_model=32),
            unet=dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                      block_out_channels=(16, 32), norm_num_groups=8,
                      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                      cross_attention_dim=32, attention_head_dim=2),
            vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=32,
                     block_out_channels=(8, 16, 16), norm_num_groups=4,
                     down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                     # As SD's 0.18215, chosen so the latents have about unit spread (measured 0.85).
                     scaling_factor=4.0),
            scheduler=SD_SCHEDULER,
        ),
        audio_vae=dict(in_channels=1, out_channels=1, latent_channels=8, layers_per_block=1, sample_size=64,
                       block_out_channels=(8, 16, 16), norm_num_groups=4,
                       down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                       scaling_factor=1.0),
        music_unet=dict(sample_size=(16, 16), in_channels=8, out_channels=8, layers_per_block=1,
                        block_out_channels=(16, 32, 32), norm_num_groups=8,
                        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("CrossAttnUpBlock2D",) * 3,
                        cross_attention_dim=32, attention_head_dim=2),
        scheduler=MUSIC_SCHEDULER,
        synapse=dict(blocks=None, alpha="learned", alpha_init=0.5),
        vocoder=dict(kind="griffin-lim", n_iter=8),
        defaults=dict(num_inference_steps=4, guidance_scale=3.0, duration_s=2.0, inversion_steps=None,
                      inversion_refine=0),
    ),
    "small": dict(
        # 77 tokens: every SynthMeL caption whole (at most 72 MiniLM tokens; 32 cut 98% of them).
        text=dict(kind="minilm", max_length=77),
        t2i=dict(
            text=dict(kind="minilm", max_length=77),
            unet=dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                      block_out_channels=(64, 128, 128), norm_num_groups=32,
                      down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                      cross_attention_dim=384, attention_head_dim=4),
            vae=dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=64,
                     block_out_channels=(32, 64, 64), norm_num_groups=32,
                     down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3),
            scheduler=SD_SCHEDULER,
        ),
        audio_vae=dict(in_channels=1, out_channels=1, latent_channels=8, layers_per_block=1, sample_size=256,
                       block_out_channels=(32, 64, 128), norm_num_groups=32,
                       down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                       scaling_factor=1.0),
        # Attention over 4,096 latent positions is what makes CPU diffusion slow, so the
        # full-resolution decoder block cross-attends only (no self-attention there). Every
        # decoder block cross-attends, so every one carries the synapse (the paper's Table 4).
        music_unet=dict(sample_size=(256, 16), in_channels=8, out_channels=8, layers_per_block=1,
                        block_out_channels=(64, 128, 192), norm_num_groups=32,
                        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("CrossAttnUpBlock2D",) * 3,
                        only_cross_attention=(True, False, False),
                        cross_attention_dim=384, attention_head_dim=4),
        scheduler=MUSIC_SCHEDULER,
        synapse=dict(blocks=None, alpha="learned", alpha_init=0.5),
        vocoder=dict(kind="griffin-lim", n_iter=8),  # docs/speed.md: 8 judged as well as 16
        defaults=dict(num_inference_steps=6, guidance_scale=3.0, duration_s=10.0, inversion_steps=12,
                      inversion_refine=0, solver="dpm++2m", precision="auto"),  # docs/speed.md
    ),
    "paper": dict(
        text=dict(kind="flan-t5-large", max_length=77),
        t2i=dict(text=dict(kind="clip-vit-l14"), unet=SD15_UNET, vae=SD15_VAE, scheduler=SD_SCHEDULER),
        audio_vae=AUDIOLDM_VAE,
        music_unet=TANGO_UNET,
        scheduler=MUSIC_SCHEDULER | dict(prediction_type="v_prediction"),
        synapse=dict(blocks=None, alpha="learned", alpha_init=0.5),
        vocoder=dict(kind="hifigan", **AUDIOLDM_HIFIGAN),
        defaults=dict(num_inference_steps=100, guidance_scale=3.0, duration_s=10.0, inversion_steps=50,
                      inversion_refine=0),
    ),
}


def preset_config(name: str) -> dict:
    if name not in PRESETS:
        raise MelFusionError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def build_text_encoder(spec: dict):
    """A text encoder from a preset's spec: random toy models, or the packaged MiniLM."""
    from melfusion.text.encoders import MINILM_PACKAGE, TextEncoder, byte_tokenizer, flan_t5_large_config

    kind = spec["kind"]
    if kind == "toy-t5":
        from transformers import T5Config, T5EncoderModel

        tok = byte_tokenizer(spec["max_length"])
        d = spec["d_model"]
        model = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=d, d_kv=d // 4, d_ff=2 * d,
                                        num_layers=2, num_heads=4, relative_attention_num_buckets=8))
        return TextEncoder(model, tok, spec["max_length"])
    if kind == "minilm":
        from melfusion.text.encoders import resolve_source

        enc = TextEncoder.from_pretrained(resolve_source(MINILM_PACKAGE), max_length=spec["max_length"])
        enc.source = MINILM_PACKAGE
        return enc
    if kind == "flan-t5-large":
        from transformers import T5EncoderModel

        return TextEncoder(T5EncoderModel(flan_t5_large_config()), None, spec["max_length"])
    if kind == "clip-vit-l14":
        from transformers import CLIPTextConfig, CLIPTextModel

        cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                             num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
        return TextEncoder(CLIPTextModel(cfg), None, 77)
    raise MelFusionError(f"unknown text encoder kind {kind!r}")


def build(name: str, seed: int = 0):
    """A pipeline of the named preset with fresh random weights (paper: on the meta device)."""
    import torch

    cfg = preset_config(name)
    if name == "paper":
        with torch.device("meta"):
            return _build(cfg, name)
    torch.manual_seed(seed)
    return _build(cfg, name)


def _build(cfg: dict, name: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from melfusion.audio.mel import MelConfig
    from melfusion.audio.vae import AudioVAE
    from melfusion.audio.vocoder import GriffinLimVocoder, HifiGanVocoder
    from melfusion.music.ldm import MusicLDM
    from melfusion.pipeline import MelFusionPipeline
    from melfusion.synapse import SynapseConfig, VisualSynapse
    from melfusion.t2i.model import TextToImageModel

    mel = MelConfig()
    text_encoder = build_text_encoder(cfg["text"])
    t2i_cfg = cfg["t2i"]
    t2i_text = text_encoder if t2i_cfg["text"] == cfg["text"] else build_text_encoder(t2i_cfg["text"])
    t2i = TextToImageModel(UNet2DConditionModel(**t2i_cfg["unet"]), AutoencoderKL(**t2i_cfg["vae"]),
                           t2i_cfg["scheduler"], t2i_text)
    unet = UNet2DConditionModel(**cfg["music_unet"])
    synapse = VisualSynapse.build(SynapseConfig(**cfg["synapse"]), unet, t2i.unet)
    music = MusicLDM(unet, synapse, cfg["scheduler"])
    voc = dict(cfg["vocoder"])
    if voc.pop("kind") == "griffin-lim":
        vocoder = GriffinLimVocoder(mel, **voc)
    else:
        from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

        vocoder = HifiGanVocoder(SpeechT5HifiGan(SpeechT5HifiGanConfig(**voc)))
    return MelFusionPipeline(text_encoder=text_encoder, t2i=t2i, audio_vae=AudioVAE(AutoencoderKL(**cfg["audio_vae"])),
                             music=music, vocoder=vocoder, mel=mel, defaults=cfg["defaults"], preset=name)
