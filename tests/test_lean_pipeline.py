"""A saved model loaded on the lean runtime makes the music the libraries' modules make."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from melfusion.loading import DEFAULT_MODEL_DIR
from melfusion.pipeline import MelFusionPipeline, use_bf16


def _music(pipe, **kw):
    kw.setdefault("num_inference_steps", 4)
    out = pipe(image="examples/beach-post.png", prompt="a calm piano piece at dusk", duration_s=2.0,
               generator=torch.Generator().manual_seed(3), progress=False, **kw)
    return out.audio


def test_the_default_on_the_lean_runtime_gives_the_same_audio():
    lean = MelFusionPipeline.from_pretrained(DEFAULT_MODEL_DIR, lean=True)
    lib = MelFusionPipeline.from_pretrained(DEFAULT_MODEL_DIR)
    assert type(lean.music.unet).__name__ == "LeanUNet" and type(lib.music.unet).__name__ == "UNet2DConditionModel"
    assert type(lean.text_encoder).__name__ == "LeanTextEncoder"
    # one MiniLM for both sides, each at its own caption length (77 tokens for the music, 32 for the T2I)
    assert lean.t2i.text_encoder.model is lean.text_encoder.model and lib.t2i.text_encoder.model is lib.text_encoder.model
    # fp32: under bf16 the two runtimes' kernels round differently, and image guidance 8 magnifies it
    a, b = _music(lean, precision="fp32"), _music(lib, precision="fp32")
    assert np.abs(a).max() > 0.05
    assert np.abs(a - b).max() < 1e-4
    other = lean(image="examples/beach-post.png", prompt="a calm piano piece at dusk", duration_s=2.0,
                 num_inference_steps=4, generator=torch.Generator().manual_seed(4), progress=False).audio
    assert np.abs(other - a).max() > 0.05  # the seed changes the music: the comparison can fail


def test_a_saved_random_model_loads_lean_with_the_same_function(tmp_path):
    from melfusion import presets

    presets.build("tiny", seed=1).save_pretrained(tmp_path / "m")
    lean = MelFusionPipeline.from_pretrained(tmp_path / "m", lean=True)
    lib = MelFusionPipeline.from_pretrained(tmp_path / "m")
    for solver in ("ddim", "dpm++2m", "unipc"):
        a, b = _music(lean, solver=solver), _music(lib, solver=solver)
        assert np.abs(a - b).max() < 1e-4, solver
    assert np.abs(_music(lean, solver="dpm++2m") - _music(lean)).max() > 1e-3  # the solver is used


def test_a_component_the_lean_runtime_does_not_cover_falls_back_to_the_library(tmp_path):
    from melfusion import presets

    presets.build("tiny", seed=1).save_pretrained(tmp_path / "m")
    cfg_file = tmp_path / "m" / "unet" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["upcast_attention"] = True  # outside the lean UNet; the same weights load in the library
    cfg_file.write_text(json.dumps(cfg))
    pipe = MelFusionPipeline.from_pretrained(tmp_path / "m", lean=True)
    assert type(pipe.music.unet).__name__ == "UNet2DConditionModel"
    assert type(pipe.t2i.unet).__name__ == "LeanUNet"


def test_generate_from_a_fresh_process_imports_neither_library(tmp_path):
    code = ("import sys; from melfusion.cli import main; rc = main(['generate', '--image', 'examples/beach-post.png', "
            f"'--text', 'soft folk guitar', '--out', r'{tmp_path / 'a.wav'}', '--duration', '2', '--steps', '2', "
            "'--quiet']); print(rc, sorted({m.split('.')[0] for m in sys.modules} & {'diffusers', 'transformers', "
            "'accelerate'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0 []"
    assert (tmp_path / "a.wav").stat().st_size > 32000


def test_bf16_runs_where_asked_and_stays_close_to_fp32():
    pipe = MelFusionPipeline.from_pretrained(DEFAULT_MODEL_DIR, lean=True)
    with pytest.raises(Exception, match="precision must be one of"):
        use_bf16("fp16")
    a, b = _music(pipe, precision="fp32"), _music(pipe, precision="bf16")
    assert np.abs(a - b).max() > 0  # bf16 arithmetic was used
    spec = [np.abs(np.fft.rfft(x[: 16000 * 2])) for x in (a, b)]
    # The same music: the spectra agree closely though samples differ at the rounding level.
    corr = np.corrcoef(np.log1p(spec[0]), np.log1p(spec[1]))[0, 1]
    assert corr > 0.9


def test_auto_precision_is_fp32_on_a_cpu_without_bf16(monkeypatch):
    import melfusion.pipeline as pl

    pipe = MelFusionPipeline.from_pretrained(DEFAULT_MODEL_DIR, lean=True)
    monkeypatch.setattr(pl, "cpu_has_bf16", lambda: False)
    assert np.array_equal(_music(pipe, precision="auto"), _music(pipe, precision="fp32"))
    monkeypatch.setattr(pl, "cpu_has_bf16", lambda: True)
    assert np.array_equal(_music(pipe, precision="auto"), _music(pipe, precision="bf16"))


def test_the_default_samples_fast_but_inverts_as_it_was_trained():
    """docs/speed.md: DPM-Solver++ in 6 steps, bf16 where the CPU has it, yet the picture is still
    inverted in the 12 DDIM steps the model was trained on (the synapse reads those features)."""
    pipe = MelFusionPipeline.from_pretrained(DEFAULT_MODEL_DIR, lean=True)
    d = pipe.defaults
    assert (d["solver"], d["num_inference_steps"], d["precision"], d["inversion_steps"]) == ("dpm++2m", 6, "auto", 12)
    assert pipe.inversion_steps_for(None, 6) == 12
    seen = []
    real = pipe.invert_image
    pipe.invert_image = lambda pixels, steps, progress=False: seen.append(steps) or real(pixels, steps, progress)
    fast = _music(pipe, num_inference_steps=None)
    assert seen == [12]
    assert np.abs(fast - _music(pipe, solver="ddim", num_inference_steps=12, precision="fp32")).max() > 1e-3


@pytest.mark.parametrize("lean", [True, False])
def test_two_sides_on_one_source_at_different_lengths_share_the_weights(tmp_path, lean):
    """The keyed and fine-tuned small models read captions at 77 tokens and the frozen T2I side at
    32: MiniLM is loaded once and each side keeps its own length."""
    from melfusion.text.encoders import load_text_encoder

    model = tmp_path / "m"
    MelFusionPipeline.from_pretrained(DEFAULT_MODEL_DIR).save_pretrained(model)
    settings = model / "text_encoder" / "melfusion_text.json"
    saved = json.loads(settings.read_text())
    settings.write_text(json.dumps(dict(saved, max_length=77)))
    pipe = MelFusionPipeline.from_pretrained(model, lean=lean)
    music, t2i = pipe.text_encoder, pipe.t2i.text_encoder
    assert (music.max_length, t2i.max_length) == (77, 32)
    assert music.model is t2i.model
    prompt = ["a calm piano piece at dusk " * 8]  # longer than 32 tokens
    alone = load_text_encoder(model / "t2i" / "text_encoder", lean)
    a, mask = t2i.encode(prompt)
    b, mask_b = alone.encode(prompt)
    assert a.shape[1] == 32 and torch.equal(a, b) and torch.equal(mask, mask_b)
    c, mask_c = music.encode(prompt)
    assert c.shape[1] == 77 and int(mask_c.sum()) > 32
    counts = pipe.parameter_counts()
    assert "t2i text encoder" not in counts


def test_loading_a_keyed_model_leaves_torch_dynamo_unimported(tmp_path):
    """Built on meta, no initialiser runs: normal_ on meta (the key embedding's) would import
    torch._dynamo, about a second of a cold start."""
    from melfusion.music.keys import with_key_embedding

    pipe = MelFusionPipeline.from_pretrained(DEFAULT_MODEL_DIR)  # a text encoder the lean runtime reads
    pipe.music.unet = with_key_embedding(pipe.music.unet)
    pipe.save_pretrained(tmp_path / "m")
    code = ("import sys; from melfusion.pipeline import MelFusionPipeline; "
            f"p = MelFusionPipeline.from_pretrained(r'{tmp_path / 'm'}', lean=True); "
            "print(type(p.music.unet).__name__, p.music.takes_key, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "LeanUNet True False"


def test_beside_the_distilled_network_the_teacher_is_read_only_when_a_call_needs_it():
    lean = MelFusionPipeline.from_pretrained(DEFAULT_MODEL_DIR, lean=True)
    lib = MelFusionPipeline.from_pretrained(DEFAULT_MODEL_DIR)
    assert lean.has_distilled and lean.music.unet.weights_deferred()
    _music(lean, precision="fp32", teacher_steps=0)  # the distilled network's pass only
    assert lean.music.unet.weights_deferred()
    _music(lean, precision="fp32", num_inference_steps=2)  # the defaults: the teacher's first step(s)
    assert not lean.music.unet.weights_deferred()
    lean = MelFusionPipeline.from_pretrained(DEFAULT_MODEL_DIR, lean=True)
    a, b = _music(lean, precision="fp32", distilled=False), _music(lib, precision="fp32", distilled=False)
    assert not lean.music.unet.weights_deferred()
    assert np.abs(a).max() > 0.05 and np.abs(a - b).max() < 1e-4
