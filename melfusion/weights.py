"""Saving a small module of ours the diffusers way: a JSON config beside safetensors weights."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from melfusion.errors import MelFusionError


def save_module(module: torch.nn.Module, config, directory: str | Path, config_name: str, weights_name: str) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / config_name).write_text(json.dumps(asdict(config), indent=2))
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(directory / weights_name))


def load_module(build, config_cls, directory: str | Path, config_name: str, weights_name: str, what: str,
                missing_hint=None):
    """`build(config_cls(**config))` with its saved weights; any mismatch is a one-line error
    (`missing_hint(missing names)` may say what the missing tensors mean)."""
    directory = Path(directory)
    try:
        module = build(config_cls(**json.loads((directory / config_name).read_text())))
        missing, unexpected = module.load_state_dict(load_file(str(directory / weights_name)), strict=False)
    except MelFusionError:
        raise
    except (OSError, TypeError, ValueError, RuntimeError) as exc:
        raise MelFusionError(f"cannot load the {what} in {directory}: {str(exc).splitlines()[0]}") from None
    hint = missing_hint(missing) if missing and missing_hint is not None else None
    if hint:
        raise MelFusionError(f"the {what} in {directory}: {hint}")
    if missing or unexpected:
        raise MelFusionError(f"the {what} weights in {directory} do not match its config "
                             f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
    return module
