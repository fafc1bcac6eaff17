"""The shipped default model (melfusion/assets/default): what it is, that it loads, and that
`melfusion generate` uses it, reading the image."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from safetensors import safe_open

from melfusion.cli import main
from melfusion.loading import DEFAULT_MODEL_DIR, load_model

EXAMPLE = Path(__file__).parents[1] / "examples" / "beach-post.png"


@pytest.fixture(scope="module")
def default_pipe():
    return load_model(None)


def test_the_default_ships_as_float16_safetensors_within_80_mb():
    index = json.loads((DEFAULT_MODEL_DIR / "model_index.json").read_text())
    assert index["preset"] == "small" and index["conditioning"] == "synapse"
    files = [f for f in DEFAULT_MODEL_DIR.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 80 * 2**20
    weights = [f for f in files if f.suffix == ".safetensors"]
    assert weights and not [f for f in files if f.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    dtypes = set()
    for f in weights:
        with safe_open(str(f), "pt") as st:
            dtypes |= {st.get_slice(k).get_dtype() for k in st.keys()}
    assert "F32" not in dtypes and "F16" in dtypes


def test_the_default_loads_with_learned_alphas_that_moved(default_pipe):
    assert default_pipe.conditioning == "synapse" and default_pipe.preset == "small"
    alphas = default_pipe.music.synapse.alphas()
    assert len(alphas) == len(default_pipe.music.synapse.layers) > 0
    assert all(0.0 < a < 1.0 for a in alphas)
    assert max(abs(a - 0.5) for a in alphas) > 1e-3  # trained, not the 0.5 they start at


def test_generate_without_model_uses_the_shipped_default(tmp_path, capsys):
    argv = ["generate", "--image", str(EXAMPLE), "--text", "calm piano", "--out", str(tmp_path / "a.wav"),
            "--steps", "2", "--duration", "1", "--quiet"]
    assert main(argv) == 0
    assert "random" not in capsys.readouterr().err
    wave, rate = sf.read(tmp_path / "a.wav")
    assert rate == 16000 and wave.shape == (16000,) and np.abs(wave).max() > 0.1


def test_the_default_reads_the_image(default_pipe):
    warm = Image.new("RGB", (256, 256), (235, 170, 90))
    night = Image.new("RGB", (256, 256), (30, 30, 90))

    def compose(image):
        out = default_pipe(image=image, prompt="a folk song with acoustic guitar", duration_s=2.0,
                           num_inference_steps=4, generator=torch.Generator().manual_seed(0), progress=False)
        return out.log_mel[0]

    a, b, again = compose(warm), compose(night), compose(warm)
    assert torch.equal(a, again)
    assert (a - b).abs().mean() > 0.05
