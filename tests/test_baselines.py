"""The paper's baselines train with the same system and sample with the same pipeline."""
import json

import pytest
import torch
from PIL import Image

from melfusion.baselines import ImageEncoder, ImageEncoderConfig
from melfusion.training.config import load_config
from training_fixtures import make_manifest, write_config


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_manifest(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("conditioning", ["text", "concat", "tangopp", "image-encoder"])
def test_one_training_step_and_one_sample(tmp_path, manifest, conditioning):
    from melfusion.pipeline import MelFusionPipeline
    from melfusion.training.trainer import train

    cfg = load_config(write_config(
        tmp_path / "c.toml", stage="music", conditioning=conditioning, manifest=str(manifest),
        out_dir=str(tmp_path / "run"), init="tiny", steps=1, batch_size=2, clip_seconds=1.0, log_every=1,
        val_every=1, checkpoint_every=1, cache_dir=str(tmp_path / "cache")))
    final = train(cfg, progress=False)
    assert json.loads((final / "model_index.json").read_text())["conditioning"] == conditioning
    pipe = MelFusionPipeline.from_pretrained(final)
    assert pipe.conditioning == conditioning

    def sample(image):
        return pipe(image=image, prompt="strings", duration_s=1.0, num_inference_steps=2, progress=False,
                    generator=torch.Generator().manual_seed(0)).log_mel

    warm = sample(Image.new("RGB", (64, 64), (240, 180, 60)))
    cold = sample(Image.new("RGB", (64, 64), (30, 40, 150)))
    if conditioning == "text":
        assert torch.equal(warm, cold)  # TANGO never sees the image
    else:
        assert (warm - cold).abs().max() > 1e-5


def test_itc_loss_is_low_for_aligned_pairs_and_trains_the_encoder():
    torch.manual_seed(0)
    enc = ImageEncoder(ImageEncoderConfig(image_size=32, patch_size=8, width=32, depth=1, heads=2, out_dim=16,
                                          itc_dim=8))
    pixels = torch.rand(6, 3, 32, 32)
    text = torch.randn(6, 5, 16)
    mask = torch.ones(6, 5, dtype=torch.long)
    loss = enc.itc_loss(enc(pixels), text, mask)
    loss.backward()
    assert enc.patch.weight.grad.abs().sum() > 0 and enc.text_head.weight.grad.abs().sum() > 0
    opt = torch.optim.Adam(enc.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        loss_now = enc.itc_loss(enc(pixels), text, mask)
        loss_now.backward()
        opt.step()
    # Six pairs: chance is log(6) = 1.79; training aligns them.
    assert loss.item() > 1.0 and loss_now.item() < 0.3


def test_image_encoder_saves_and_loads(tmp_path):
    enc = ImageEncoder(ImageEncoderConfig(image_size=32, patch_size=8, width=32, depth=1, heads=2, out_dim=16))
    enc.save_pretrained(tmp_path / "enc")
    again = ImageEncoder.from_pretrained(tmp_path / "enc")
    x = torch.rand(2, 3, 32, 32)
    assert again(x).shape == (2, 16, 16)
    assert torch.equal(again(x), enc(x))
