"""Evaluation metrics of MeLFusion: FAD, FD, paired KL, IMSM and the CLAP score.

The mathematics (float64, model-free) lives in one file per metric; the models that turn audio,
text and images into vectors live in `melfusion.metrics.embedders` and load from local paths:

    from melfusion.metrics import fad, paired_kl_from_waves, imsm_from_models, load_embedder
    vggish = load_embedder("vggish:/models/vggish")
    fad(vggish, reference_waves, generated_waves, sample_rate=16000)

docs/metrics.md gives the definitions and conventions.
"""
import importlib

# Each public name and the submodule it lives in, imported on first use (PEP 562): the command
# line registers `melfusion evaluate` without paying for the metrics' imports on every command.
_WHERE = {
    "clap_score": "clap_score", "clap_score_from_model": "clap_score", "clap_scores": "clap_score",
    "AudioClassifier": "embedders", "AudioEmbedder": "embedders", "ImageTextModel": "embedders",
    "TextAudioModel": "embedders", "embedder_kinds": "embedders", "load_embedder": "embedders",
    "register_embedder": "embedders",
    "fad": "frechet", "fd": "frechet", "frechet_audio_distance": "frechet", "frechet_distance": "frechet",
    "frechet_distance_embeddings": "frechet", "gaussian_stats": "frechet",
    "imsm": "imsm", "imsm_from_models": "imsm", "imsm_matrix": "imsm", "imsm_scores": "imsm",
    "similarity_logits": "imsm",
    "kl_sigmoid_per_pair": "kl", "kl_softmax_per_pair": "kl", "paired_kl": "kl", "paired_kl_from_waves": "kl",
}


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"melfusion.metrics.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'melfusion.metrics' has no attribute {name!r}")


__all__ = [
    "frechet_distance", "frechet_distance_embeddings", "gaussian_stats", "frechet_audio_distance", "fad", "fd",
    "kl_softmax_per_pair", "kl_sigmoid_per_pair", "paired_kl", "paired_kl_from_waves",
    "imsm_matrix", "imsm_scores", "imsm", "imsm_from_models", "similarity_logits",
    "clap_scores", "clap_score", "clap_score_from_model",
    "AudioEmbedder", "AudioClassifier", "TextAudioModel", "ImageTextModel",
    "load_embedder", "register_embedder", "embedder_kinds",
]


def __dir__():
    return sorted(set(globals()) | set(__all__))
