"""Reading PyTorch checkpoint files safely (no arbitrary code) with one-line errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from melfusion.errors import MelFusionError


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_torch_file(path: str | Path, what: str, allow_numpy: bool = False):
    """`torch.load(..., weights_only=True)` on the CPU.

    `allow_numpy` also admits pickled numpy arrays (older releases, such as torchvggish's PCA
    parameters, stored them so), and nothing else.
    """
    path = Path(path)
    if not path.is_file():
        raise MelFusionError(f"{what} checkpoint not found: {path}")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = exc
    if allow_numpy:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
            if names and all(n.startswith("numpy.") for n in names):
                import importlib

                objects = []
                for name in names:
                    module, _, attr = name.rpartition(".")
                    objects.append(getattr(importlib.import_module(module), attr))
                # numpy >= 1.25 pickles each array's dtype class as well.
                objects += [type(np.dtype(code)) for code in "?bhilqBHILQefd"]
                with torch.serialization.safe_globals(objects):
                    return torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            first = exc
    reason = _first_line(first)
    if reason.startswith("Weights only load failed"):
        reason = "not a PyTorch checkpoint of plain tensors (refusing to unpickle arbitrary objects)"
    raise MelFusionError(f"cannot read {what} checkpoint {path}: {reason}")
