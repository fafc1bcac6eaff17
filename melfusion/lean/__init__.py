"""The lean runtime: melfusion's inference modules without diffusers or transformers.

Importing diffusers and transformers costs a fresh process about 3 s on these machines, more
than composing 10 s of music does. Inference needs only a small part of them, written here on
plain torch: the UNet, the KL autoencoder, the BERT-style text encoder, the DDIM schedulers.
Each reads the saved folder diffusers or transformers wrote (the same config.json, the same
weight names) and computes what the library computes, to float rounding (the tests hold each
to its library on random models and on the shipped default).

A config outside what is written here raises `Unsupported`; the loader then falls back to the
libraries (`melfusion.loading`), so any model that loaded before still loads.

Modules are built on the meta device and their weights assigned straight from the file: no
random initialisation is spent on numbers that are overwritten at once.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import torch


class Unsupported(Exception):
    """This saved model uses something the lean runtime does not implement (use the library)."""


class Config(dict):
    """A saved config.json, read by attribute as the libraries' configs are (`unet.config.sample_size`)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def read(cls, path: str | Path) -> "Config":
        return cls(json.loads(Path(path).read_text()))


def require(config: dict, key: str, allowed, default=None):
    """The config's value for `key`, or `Unsupported` when it is not among `allowed`."""
    value = config.get(key, default)
    if value not in allowed:
        raise Unsupported(f"{key} = {value!r}")
    return value


# torch.nn.init's in-place initialisers. On the meta device some of them (normal_) go through
# torch._refs, whose first use imports torch._dynamo: about a second of a cold start, for
# values the weights then replace.
_INITIALISERS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                 "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
                 "sparse_")


def build_on_meta(factory):
    """Build a module without allocating or initialising its parameters."""
    init = torch.nn.init
    saved = {name: getattr(init, name) for name in _INITIALISERS if hasattr(init, name)}
    try:
        for name in saved:
            setattr(init, name, lambda tensor, *args, **kwargs: tensor)
        with torch.device("meta"):
            return factory()
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


def assign_weights(module: torch.nn.Module, state: dict, what: str, dtype=torch.float32) -> torch.nn.Module:
    """Load `state` into a meta-built module by assignment: every parameter and persistent buffer
    must be in `state` with its shape, and nothing else may be (a mismatch is `Unsupported`)."""
    _check_shapes(module, {k: tuple(v.shape) for k, v in state.items()}, what)
    module.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
                           assign=True, strict=True)
    # Non-persistent buffers built on meta (none are expected) would stay unallocated.
    for name, buf in module.named_buffers():
        if buf.is_meta:
            raise Unsupported(f"{what}: buffer {name} has no value")
    return module.eval().requires_grad_(False)


def _check_shapes(module: torch.nn.Module, shapes: dict[str, tuple], what: str) -> None:
    """Every parameter and persistent buffer of `module` in `shapes` with its shape, and nothing
    else (a mismatch is `Unsupported`)."""
    expected = module.state_dict(keep_vars=True)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise Unsupported(f"{what}: weights do not match the lean module (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    for name, shape in shapes.items():
        if shape != tuple(expected[name].shape):
            raise Unsupported(f"{what}: {name} has shape {shape}, expected {tuple(expected[name].shape)}")


def check_weights(module: torch.nn.Module, path: str | Path, what: str) -> None:
    """What `assign_weights` checks (every name, every shape), from the safetensors file's header
    alone: no tensor is read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - as read_safetensors: the library then says what is wrong
        raise Unsupported(f"cannot read {path}: {type(exc).__name__}") from None
    _check_shapes(module, shapes, what)


def defer_weights(module: torch.nn.Module, path: str | Path, what: str) -> torch.nn.Module:
    """A meta-built module whose weights are read from `path` on its first forward pass (then as
    `assign_weights` would have at load). For a network a model carries but a default call does
    not run: the teacher beside a distilled network costs a cold start nothing until it is used.
    The file's names and shapes are checked now, so a mismatch still falls back to the library
    at load time."""
    check_weights(module, path, what)
    lock = threading.Lock()

    def materialise(mod, args, kwargs):
        with lock:
            if handle[0] is not None:
                assign_weights(mod, read_safetensors(path), what)
                handle[0].remove()
                handle[0] = None
        return None

    handle = [module.register_forward_pre_hook(materialise, with_kwargs=True)]
    module.weights_deferred = lambda: handle[0] is not None
    return module.eval().requires_grad_(False)


def read_safetensors(path: str | Path) -> dict:
    """The tensors of a safetensors file; a file that is missing or does not read is `Unsupported`
    (the library's loader then says what is wrong with it, in its words)."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure to read hands the file to the library
        raise Unsupported(f"cannot read {path}: {type(exc).__name__}") from None


def lean_or_library(lean: bool, lean_load, library_load):
    """`lean_load()` where `lean` and it covers the saved config, `library_load()` otherwise."""
    if lean:
        try:
            return lean_load()
        except Unsupported:
            pass
    return library_load()


def load_unet(directory: str | Path, lean: bool = False, defer: bool = False):
    """A saved `UNet2DConditionModel`: the lean runtime's where it covers the config, else diffusers'.
    `defer`: the lean UNet's weights are read on its first forward pass (`defer_weights`)."""
    def library():
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_pretrained(str(directory))

    def own():
        from melfusion.lean.unet import LeanUNet

        return LeanUNet.from_pretrained(directory, defer=defer)

    return lean_or_library(lean, own, library)


def load_vae(directory: str | Path, lean: bool = False):
    """A saved `AutoencoderKL`: the lean runtime's where it covers the config, else diffusers'."""
    def library():
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(str(directory))

    def own():
        from melfusion.lean.vae import LeanAutoencoderKL

        return LeanAutoencoderKL.from_pretrained(directory)

    return lean_or_library(lean, own, library)
