"""MelFusionPipeline: image + caption -> waveform, reproducible, saved and loaded whole."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from melfusion.errors import MelFusionError
from melfusion.pipeline import MelFusionPipeline


def _run(pipe, image, prompt="a folk song with fiddle", seed=0, **kw):
    kw.setdefault("duration_s", 1.0)
    kw.setdefault("num_inference_steps", 3)
    return pipe(image=image, prompt=prompt, generator=torch.Generator().manual_seed(seed), progress=False, **kw)


def test_output_shape_rate_and_timings(tiny_pipe, example_image):
    out = _run(tiny_pipe, example_image, duration_s=1.5)
    assert out.sample_rate == 16000
    assert out.audio.shape == (24000,) and out.audio.dtype == np.float32
    assert np.isfinite(out.audio).all() and np.abs(out.audio).max() <= 1.0
    assert out.log_mel.shape == (1, tiny_pipe.frames_for(1.5), 64)
    assert set(out.timings) == {"text", "inversion", "denoising", "vocoding"}


def test_same_seed_same_audio_other_seed_other_audio(tiny_pipe, example_image):
    a = _run(tiny_pipe, example_image, seed=7).audio
    b = _run(tiny_pipe, example_image, seed=7).audio
    c = _run(tiny_pipe, example_image, seed=8).audio
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_the_image_and_the_caption_both_change_the_music(tiny_pipe, example_image):
    base = _run(tiny_pipe, example_image).log_mel
    other_image = Image.new("RGB", (300, 200), (20, 30, 120))
    assert (base - _run(tiny_pipe, other_image).log_mel).abs().mean() > 1e-4
    assert (base - _run(tiny_pipe, example_image, prompt="heavy metal").log_mel).abs().mean() > 1e-4


def test_image_features_follow_the_music_step_to_the_matching_inverted_step(tiny_pipe, example_image):
    pixels = tiny_pipe.prepare_images([example_image])
    traj = tiny_pipe.invert_image(pixels, 10)
    # A music timestep near the end of the schedule reads the noisiest inverted step, and so on.
    assert traj.index_for(999 / 1000) == 10
    assert traj.index_for(0.0) == 1
    assert traj.index_for(0.5) in (5, 6)
    early = tiny_pipe.image_features(traj, 950)
    late = tiny_pipe.image_features(traj, 20)
    assert not torch.allclose(early[0][0], late[0][0])


def test_a_separate_image_guidance_scale_splits_the_two_terms(tiny_pipe, example_image):
    plain = _run(tiny_pipe, example_image, guidance_scale=3.0).log_mel
    # Equal scales are plain classifier-free guidance.
    assert torch.equal(plain, _run(tiny_pipe, example_image, guidance_scale=3.0, image_guidance_scale=3.0).log_mel)
    # Image scale 0 leaves e(-,-) + g (e(T,-) - e(-,-)): the music of the caption alone, the
    # same model run text-only (on the null image): the caption-only branch keeps the caption at
    # the weight it has beside the picture. (Bit for bit per UNet call, tests/test_synapse.py;
    # here the guidance batches hold 3 and 2 passes, and CPU kernels round batch sizes apart.)
    no_image = _run(tiny_pipe, example_image, guidance_scale=3.0, image_guidance_scale=0.0).log_mel
    tiny_pipe.conditioning = "text"
    try:
        text_only = _run(tiny_pipe, example_image, guidance_scale=3.0).log_mel
    finally:
        tiny_pipe.conditioning = "synapse"
    assert (no_image - text_only).abs().max() < 1e-5
    other = _run(tiny_pipe, Image.new("RGB", (64, 64), (20, 30, 120)), guidance_scale=3.0, image_guidance_scale=0.0)
    assert torch.equal(no_image, other.log_mel)
    assert (plain - text_only).abs().mean() > 1e-4
    # A larger image scale moves the music further from the caption-only music than plain guidance.
    strong = _run(tiny_pipe, example_image, guidance_scale=3.0, image_guidance_scale=9.0).log_mel
    assert (strong - text_only).abs().mean() > (plain - text_only).abs().mean()
    with pytest.raises(MelFusionError, match="image guidance scale"):
        _run(tiny_pipe, example_image, image_guidance_scale=-1.0)


@pytest.mark.parametrize("image_guidance", [None, 6.0])
def test_guidance_on_the_first_steps_only(tiny_pipe, example_image, monkeypatch, image_guidance):
    kw = dict(num_inference_steps=6, guidance_scale=3.0, image_guidance_scale=image_guidance)
    passes = 3 if image_guidance is not None else 2
    every = _run(tiny_pipe, example_image, **kw).log_mel
    assert torch.equal(every, _run(tiny_pipe, example_image, guided_steps=6, **kw).log_mel)
    assert torch.equal(every, _run(tiny_pipe, example_image, guided_steps=60, **kw).log_mel)
    batches = []
    predict = tiny_pipe.music.predict
    monkeypatch.setattr(tiny_pipe.music, "predict", lambda latents, *a, **k: batches.append(len(latents))
                        or predict(latents, *a, **k))
    some = _run(tiny_pipe, example_image, guided_steps=4, **kw).log_mel
    assert batches == [passes] * 4 + [1] * 2  # the last two steps: one conditional pass each
    monkeypatch.undo()
    # None guided: the caption and the picture's conditional pass at every step, guidance 1's music.
    none = _run(tiny_pipe, example_image, guided_steps=0, **kw).log_mel
    unguided = _run(tiny_pipe, example_image, num_inference_steps=6, guidance_scale=1.0).log_mel
    assert torch.equal(none, unguided)
    assert (some - every).abs().mean() > 1e-5 and (some - none).abs().mean() > 1e-5
    for bad in (-1, 2.5, True):
        with pytest.raises(MelFusionError, match="guided steps"):
            _run(tiny_pipe, example_image, guided_steps=bad, **kw)


def test_batch_of_prompts(tiny_pipe, example_image):
    out = tiny_pipe(image=[example_image, example_image], prompt=["jazz", "rock"], duration_s=1.0,
                    num_inference_steps=2, generator=torch.Generator().manual_seed(0), progress=False)
    assert out.audio.shape == (2, 16000)
    with pytest.raises(MelFusionError, match="2 images for 3 captions"):
        tiny_pipe(image=[example_image] * 2, prompt=["a", "b", "c"], progress=False)


def test_save_and_load_give_the_same_music(tiny_pipe, example_image, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "model")
    index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert index["preset"] == "tiny" and set(index["components"]) >= {"t2i", "unet", "synapse", "vocoder"}
    assert (tmp_path / "model" / "synapse" / "synapse.safetensors").is_file()
    assert list((tmp_path / "model" / "unet").glob("*.safetensors"))
    loaded = MelFusionPipeline.from_pretrained(tmp_path / "model")
    assert np.array_equal(_run(loaded, example_image).audio, _run(tiny_pipe, example_image).audio)
    assert not list(tmp_path.glob(".tmp-*"))  # no staging folder left behind


def test_bad_arguments_are_refused_with_clear_errors(tiny_pipe, example_image):
    for kw, match in [(dict(duration_s=0.2), "duration"), (dict(duration_s=float("nan")), "duration"),
                      (dict(duration_s=121), "duration"), (dict(num_inference_steps=0), "steps"),
                      (dict(guidance_scale=-1), "guidance"), (dict(prompt="   "), "empty"),
                      (dict(prompt="x" * 1001), "too long"), (dict(prompt="!!! ???"), "no words")]:
        kw.setdefault("prompt", "jazz")
        with pytest.raises(MelFusionError, match=match):
            tiny_pipe(image=example_image, progress=False, **kw)


def test_malformed_model_directories_are_refused(tmp_path):
    with pytest.raises(MelFusionError, match="not found"):
        MelFusionPipeline.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MelFusionError, match="not a melfusion model"):
        MelFusionPipeline.from_pretrained(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_index.json").write_text("{not json")
    with pytest.raises(MelFusionError, match="malformed"):
        MelFusionPipeline.from_pretrained(tmp_path / "broken")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "model_index.json").write_text(json.dumps(
        {"components": {c: c for c in ("text_encoder", "t2i", "audio_vae", "unet", "synapse", "scheduler", "vocoder")}}))
    with pytest.raises(MelFusionError, match="component text_encoder not found"):
        MelFusionPipeline.from_pretrained(tmp_path / "partial")


def test_paper_preset_has_the_published_sizes():
    from melfusion import presets

    counts = presets.build("paper").parameter_counts()
    assert counts["t2i unet"] == 859_520_964          # Stable Diffusion v1.5's UNet
    assert counts["music unet"] == pytest.approx(866e6, rel=0.002)  # TANGO's, as it reports
    assert counts["text encoder"] == pytest.approx(341.2e6, rel=0.001)  # FLAN-T5-large encoder


def test_components_can_live_in_other_directories(tiny_pipe, example_image, tmp_path):
    """A paper-scale model points at checkpoints the user already has, e.g. Stable Diffusion."""
    import shutil

    tiny_pipe.save_pretrained(tmp_path / "model")
    shutil.move(str(tmp_path / "model" / "t2i"), str(tmp_path / "stable-diffusion"))
    index_file = tmp_path / "model" / "model_index.json"
    index = json.loads(index_file.read_text())
    index["components"]["t2i"] = str(tmp_path / "stable-diffusion")
    index_file.write_text(json.dumps(index))
    loaded = MelFusionPipeline.from_pretrained(tmp_path / "model")
    assert np.array_equal(_run(loaded, example_image).audio, _run(tiny_pipe, example_image).audio)
