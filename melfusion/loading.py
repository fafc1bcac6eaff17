"""Loading a model: the one place the command line, the demo, the evaluation and Python users
share (nothing here imports the command line)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from melfusion.errors import MelFusionError

DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "default"


def quiet_libraries():
    """Silence diffusers' and transformers' warnings and progress bars (the CLI and the apps speak
    for themselves), without importing either: a library imported later reads the settings from
    the environment, one already imported is told directly."""
    for name in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):
        os.environ.setdefault(name, "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    if "diffusers" in sys.modules:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()


def load_model(spec: str | None, seed: int = 0, lean: bool = True):
    """A model directory, a preset name (fresh random weights), or the shipped default. Saved
    models load for inference on the lean runtime where it covers them (`lean=False`: diffusers'
    and transformers' modules, as training uses)."""
    from melfusion import presets
    from melfusion.pipeline import MelFusionPipeline

    if spec is None:
        if (DEFAULT_MODEL_DIR / "model_index.json").is_file():
            return MelFusionPipeline.from_pretrained(DEFAULT_MODEL_DIR, lean=lean)
        print("note: no trained default model ships with this version yet; using the 'tiny' preset with "
              "random weights, so the result is noise-like, not music", file=sys.stderr)
        return presets.build("tiny", seed=seed)
    if spec in presets.PRESETS and not Path(spec).exists():
        if spec == "paper":
            raise MelFusionError("the 'paper' preset has no weights of its own; point --model at a saved "
                                 "paper-scale model directory")
        print(f"note: preset '{spec}' with random (untrained) weights", file=sys.stderr)
        return presets.build(spec, seed=seed)
    return MelFusionPipeline.from_pretrained(spec, lean=lean)
