"""Metric models behind one interface, loaded from local files by a `kind:PATH` spec.

    load_embedder("vggish:/models/vggish")         # FAD
    load_embedder("panns:/models/Cnn14_mAP=0.431.pth")  # FD, KL
    load_embedder("clap:/models/clap-htsat-unfused")    # CLAP score, IMSM (audio side)
    load_embedder("clip:/models/clip-vit-base-patch32") # IMSM (image side)

A new kind (the project's own `synthmel` judge) is one `register_embedder` call with a function
that takes the path and keyword options and returns an object of the interfaces in `base`.
"""
from __future__ import annotations

from typing import Callable

from melfusion.errors import MelFusionError
from melfusion.metrics.embedders.base import (AudioClassifier, AudioEmbedder, ImageTextModel, TextAudioModel,
                                              check_waves)

_LOADERS: dict[str, Callable] = {}


def register_embedder(kind: str, loader: Callable) -> None:
    """Make `load_embedder(f"{kind}:PATH", **options)` call `loader(PATH, **options)`."""
    _LOADERS[kind] = loader


def embedder_kinds() -> list[str]:
    return sorted(_LOADERS)


def load_embedder(spec: str, **options):
    """Parse `kind:PATH` and load the model from PATH (a file or directory, never a download)."""
    kind, sep, path = str(spec).partition(":")
    if not sep or not path:
        raise MelFusionError(f"embedder spec must be KIND:PATH (kinds: {', '.join(embedder_kinds())}), got {spec!r}")
    kind = kind.strip().lower()
    if kind not in _LOADERS:
        raise MelFusionError(f"unknown embedder kind {kind!r}; known: {', '.join(embedder_kinds())}")
    return _LOADERS[kind](path, **options)


def _vggish(path, **options):
    from melfusion.metrics.embedders.vggish import VGGish
    return VGGish.from_path(path, **options)


def _panns(path, **options):
    from melfusion.metrics.embedders.panns import PANNs
    return PANNs.from_path(path, **options)


def _clap(path, **options):
    from melfusion.metrics.embedders.clap import CLAP
    return CLAP.from_pretrained(path, **options)


def _clip(path, **options):
    from melfusion.metrics.embedders.clip import CLIP
    return CLIP.from_pretrained(path, **options)


def _synthmel(path, **options):
    from melfusion.metrics.embedders.synthmel import load_synthmel
    return load_synthmel(path, **options)


register_embedder("vggish", _vggish)
register_embedder("panns", _panns)
register_embedder("clap", _clap)
register_embedder("clip", _clip)
register_embedder("synthmel", _synthmel)  # "synthmel:default" is the judge shipped in melfusion/assets/judges

__all__ = ["AudioEmbedder", "AudioClassifier", "TextAudioModel", "ImageTextModel", "check_waves",
           "load_embedder", "register_embedder", "embedder_kinds"]
