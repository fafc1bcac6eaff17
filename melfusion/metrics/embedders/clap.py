"""CLAP (LAION's contrastive language-audio model) through transformers' `ClapModel`.

Layout: a directory as published on the hub (e.g. laion/clap-htsat-unfused, laion/larger_clap_music):
`config.json` + `model.safetensors` (or `pytorch_model.bin`), `preprocessor_config.json` for the
`ClapFeatureExtractor` (48 kHz, 64 mel bins, 10 s windows) and a RoBERTa tokenizer (`vocab.json`,
`merges.txt`, `tokenizer_config.json` and/or `tokenizer.json`). Audio at any rate is resampled to
the feature extractor's rate.

The feature extractor draws random crops for clips longer than its window ("rand_trunc" and
"fusion" truncation); the draw is seeded so an embedding is a function of the audio alone. A
non-fusion model given a fusion preprocessor would fail on the 4-channel input, so the
truncation is set to "rand_trunc" for it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from melfusion.metrics.embedders.base import TextAudioModel, unit_rows
from melfusion.metrics.embedders.hf import (TOKENIZER_FILES, check_model_dir, embed_texts, load_part,
                                            max_text_tokens, require_files)

CROP_SEED = 0


class CLAP(TextAudioModel):
    """`embed_text(texts) -> (n, d)`, `embed_audio(waves) -> (n, d)`, both unit-norm.

    `logit_scale` is the audio-to-text scale (`logit_scale_a`: logits_per_audio, what IMSM's
    P_AT uses); `text_logit_scale` the text-to-audio one.
    """

    name = "clap"

    def __init__(self, model, feature_extractor, tokenizer, batch_size: int = 8):
        self.model = model.eval().requires_grad_(False)
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.dim = int(model.config.projection_dim)
        self.logit_scale = float(model.logit_scale_a.exp())
        self.text_logit_scale = float(model.logit_scale_t.exp())
        # RoBERTa positions start after the padding index.
        self.max_tokens = max_text_tokens(tokenizer, model.config.text_config.max_position_embeddings, reserved=2)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        return embed_texts(self.model, self.tokenizer, texts, self.batch_size, self.max_tokens)

    @torch.no_grad()
    def _embed(self, waves: list[np.ndarray]) -> np.ndarray:
        out = []
        for i in range(0, len(waves), self.batch_size):
            state = np.random.get_state()
            np.random.seed(CROP_SEED)
            try:
                inputs = self.feature_extractor(waves[i:i + self.batch_size], sampling_rate=self.sample_rate,
                                                return_tensors="pt")
            finally:
                np.random.set_state(state)
            feats = self.model.get_audio_features(input_features=inputs["input_features"],
                                                  is_longer=inputs.get("is_longer"))
            out.append(feats.pooler_output.float().numpy())
        return unit_rows(np.concatenate(out))

    @classmethod
    def from_pretrained(cls, directory: str | Path, batch_size: int = 8) -> "CLAP":
        from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

        directory = check_model_dir(directory, "CLAP", ("clap",))
        require_files(directory, "CLAP tokenizer", TOKENIZER_FILES)
        require_files(directory, "CLAP feature extractor", (("preprocessor_config.json",), ("processor_config.json",)))
        model = load_part(ClapModel.from_pretrained, directory, "the CLAP model")
        extractor = load_part(ClapFeatureExtractor.from_pretrained, directory, "the CLAP feature extractor")
        tokenizer = load_part(AutoTokenizer.from_pretrained, directory, "the CLAP tokenizer")
        if extractor.truncation == "fusion" and not model.config.audio_config.enable_fusion:
            extractor.truncation = "rand_trunc"
        return cls(model, extractor, tokenizer, batch_size)

    def save_pretrained(self, directory: str | Path) -> None:
        """The published layout: model, `preprocessor_config.json`, tokenizer files."""
        self.model.save_pretrained(str(directory))
        self.feature_extractor.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))
