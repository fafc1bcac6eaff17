"""Evaluation metrics of MeLFusion: FAD, FD, paired KL, IMSM and the CLAP score.

The mathematics (float64, model-free) lives in one file per metric; the models that turn audio,
text and images into vectors live in `melfusion.metrics.embedders` and load from local paths:

    from melfusion.metrics import fad, paired_kl_from_waves, imsm_from_models, load_embedder
    vggish = load_embedder("vggish:/models/vggish")
    fad(vggish, reference_waves, generated_waves, sample_rate=16000)

docs/metrics.md gives the definitions and conventions.
"""
from melfusion.metrics.clap_score import clap_score, clap_score_from_model, clap_scores
from melfusion.metrics.embedders import (AudioClassifier, AudioEmbedder, ImageTextModel, TextAudioModel,
                                         embedder_kinds, load_embedder, register_embedder)
from melfusion.metrics.frechet import (fad, fd, frechet_audio_distance, frechet_distance, frechet_distance_embeddings,
                                       gaussian_stats)
from melfusion.metrics.imsm import imsm, imsm_from_models, imsm_matrix, imsm_scores, similarity_logits
from melfusion.metrics.kl import kl_sigmoid_per_pair, kl_softmax_per_pair, paired_kl, paired_kl_from_waves

__all__ = [
    "frechet_distance", "frechet_distance_embeddings", "gaussian_stats", "frechet_audio_distance", "fad", "fd",
    "kl_softmax_per_pair", "kl_sigmoid_per_pair", "paired_kl", "paired_kl_from_waves",
    "imsm_matrix", "imsm_scores", "imsm", "imsm_from_models", "similarity_logits",
    "clap_scores", "clap_score", "clap_score_from_model",
    "AudioEmbedder", "AudioClassifier", "TextAudioModel", "ImageTextModel",
    "load_embedder", "register_embedder", "embedder_kinds",
]
