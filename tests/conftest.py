import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_pipe():
    """One random tiny pipeline for the session; tests must not modify its weights."""
    from melfusion import presets

    return presets.build("tiny", seed=0)


@pytest.fixture(scope="session")
def example_image():
    from pathlib import Path

    from melfusion.images import load_image

    return load_image(Path(__file__).parents[1] / "examples" / "beach-post.png")
