"""The BERT-style text encoder (MiniLM-L6, the shipped default) on plain torch and `tokenizers`.

`LeanTextEncoder.from_pretrained(directory)` reads the same folder `TextEncoder.from_pretrained`
does (`melfusion_text.json`, a `package:` source, a sibling `tokenizer/` folder) and returns the
same `(last_hidden_state, attention_mask)` from `encode`, without importing transformers:

- `LeanBert` is transformers' `BertModel` forward for absolute position embeddings and GELU,
  with attention through `scaled_dot_product_attention` and BERT's key-padding mask. Its
  `state_dict()` keys are the ones `BertModel` saves, less the pooler and the `position_ids`
  buffer (both dropped explicitly on load: the encoder returns token states, not the pooled one).
- `LeanTokenizer` is the folder's `tokenizer.json`, padded to `max_length` and truncated as
  transformers' fast tokenizer does for `padding="max_length", truncation=True`.

Anything outside that (another model type, relative positions, a decoder, another activation,
a tokenizer class whose pipeline transformers rebuilds in a way not mirrored here) raises
`Unsupported`, so a loader can fall back to the library.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from melfusion.lean import Config, Unsupported, assign_weights, build_on_meta, read_safetensors, require
from melfusion.text.encoders import CONFIG_NAME, locate, text_length  # these import no transformers

VERY_LARGE_INTEGER = int(1e30)  # transformers' model_max_length when a tokenizer names none


# --------------------------------------------------------------------------------------------
# The model


def check_bert_config(config: dict) -> Config:
    """The config as a `Config`, or `Unsupported` for anything `LeanBert` does not compute."""
    config = Config(config)
    require(config, "model_type", ("bert",))
    require(config, "position_embedding_type", ("absolute",), default="absolute")
    require(config, "hidden_act", ("gelu",), default="gelu")
    require(config, "is_decoder", (False,), default=False)
    require(config, "add_cross_attention", (False,), default=False)
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings"):
        if not isinstance(config.get(key), int) or config[key] <= 0:
            raise Unsupported(f"{key} = {config.get(key)!r}")
    if config.hidden_size % config.num_attention_heads:
        raise Unsupported(f"hidden_size {config.hidden_size} is not a multiple of "
                          f"num_attention_heads {config.num_attention_heads}")
    config.setdefault("type_vocab_size", 2)
    config.setdefault("layer_norm_eps", 1e-12)
    if not isinstance(config.type_vocab_size, int) or config.type_vocab_size < 1:
        raise Unsupported(f"type_vocab_size = {config.type_vocab_size!r}")
    return config


class _Table(nn.Module):
    """An embedding table (`weight`, rows looked up). Not nn.Embedding: its initialiser, even on
    the meta device, imports torch's reference ops on first use, about 1.5 s of a cold start."""

    def __init__(self, rows: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(rows, width))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class _Embeddings(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.word_embeddings = _Table(c.vocab_size, c.hidden_size)
        self.position_embeddings = _Table(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = _Table(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        positions = torch.arange(n, device=input_ids.device)
        # Every token is of type 0, as BertModel assumes when no token_type_ids are passed; the
        # additions run in BertModel's order (word + type, then + position) for the same rounding.
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        x = x + self.position_embeddings(positions)
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.heads = c.num_attention_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        b, n, width = x.shape

        def split(t):
            return t.view(b, n, self.heads, width // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                             attn_mask=keep)
        return out.transpose(1, 2).reshape(b, n, width)


class _AddNorm(nn.Module):
    """A projection, the residual, then LayerNorm (BertSelfOutput and BertOutput)."""

    def __init__(self, width_in: int, c: Config):
        super().__init__()
        self.dense = nn.Linear(width_in, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.self = _SelfAttention(c)  # the checkpoint's name: attention.self.query
        self.output = _AddNorm(c.hidden_size, c)

    def forward(self, x, keep):
        return self.output(self.self(x, keep), x)


class _Intermediate(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)

    def forward(self, x):
        return F.gelu(self.dense(x))  # exact (erf) GELU: hidden_act "gelu"


class _Layer(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _AddNorm(c.intermediate_size, c)

    def forward(self, x, keep):
        x = self.attention(x, keep)
        return self.output(self.intermediate(x), x)


class _Encoder(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class LeanBert(nn.Module):
    """BertModel's encoder: `(input_ids, attention_mask) -> last_hidden_state`."""

    # Saved keys a BERT checkpoint may carry that the encoder does not use.
    DROPPED_PREFIXES = ("pooler.",)
    DROPPED_KEYS = ("embeddings.position_ids", "embeddings.token_type_ids")
    # Heads of BertFor* checkpoints, whose encoder keys sit under "bert.".
    HEAD_PREFIXES = ("cls.",)

    def __init__(self, config: dict):
        super().__init__()
        self.config = check_bert_config(config)
        self.embeddings = _Embeddings(self.config)
        self.encoder = _Encoder(self.config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        n = input_ids.shape[1]
        if n > self.config.max_position_embeddings:
            raise ValueError(f"{n} tokens, more than max_position_embeddings {self.config.max_position_embeddings}")
        x = self.embeddings(input_ids)
        keep = None
        if attention_mask is not None:
            # BERT's key-padding mask, as a boolean mask (for scaled_dot_product_attention: an additive
            # 0 where a key is attended, -inf where it is padding), which is what transformers' sdpa
            # path passes. A prompt that is all padding (an empty caption under a tokenizer that adds
            # no special tokens) then attends to nothing and gets zeros from attention, as it does
            # there; the older additive `finfo.min` mask would spread it evenly over the padding.
            keep = attention_mask[:, None, None, :].bool()
        for layer in self.encoder.layer:
            x = layer(x, keep)
        return x

    @classmethod
    def prepare_state(cls, state: dict) -> dict:
        """The checkpoint's tensors under LeanBert's names: a BertFor* "bert." prefix stripped, its
        heads, the pooler and the position/type id buffers dropped; everything else kept, so that
        `assign_weights` still refuses a checkpoint with weights it does not know."""
        if any(k.startswith("bert.") for k in state):
            state = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state.items()
                     if k.startswith("bert.") or not k.startswith(cls.HEAD_PREFIXES)}
        return {k: v for k, v in state.items()
                if k not in cls.DROPPED_KEYS and not k.startswith(cls.DROPPED_PREFIXES)}

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype=torch.float32) -> "LeanBert":
        directory = Path(directory)
        config = check_bert_config(Config.read(directory / "config.json"))
        state = cls.prepare_state(read_weights(directory))
        model = build_on_meta(lambda: cls(config))
        return assign_weights(model, state, f"BERT text encoder in {directory}", dtype=dtype)


def read_weights(directory: Path) -> dict:
    """The tensors of a transformers folder: model.safetensors (sharded or not) or pytorch_model.bin."""
    if (directory / "model.safetensors").is_file():
        return read_safetensors(directory / "model.safetensors")
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        state = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(read_safetensors(directory / shard))
        return state
    if (directory / "pytorch_model.bin").is_file():
        return torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise Unsupported(f"no model.safetensors or pytorch_model.bin in {directory}")


# --------------------------------------------------------------------------------------------
# The tokenizer


def _token_text(value):
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


# Tokenizer classes whose transformers loader uses tokenizer.json as it is.
_AS_SAVED = ("PreTrainedTokenizerFast", "TokenizersBackend")
# Classes whose loader rebuilds the normalizer, pre-tokenizer and post-processor (mirrored here).
_BERT = ("BertTokenizer", "BertTokenizerFast")
_ADDED_TOKEN_FLAGS = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")


class LeanTokenizer:
    """A `tokenizers.Tokenizer` that pads to a fixed length and truncates like transformers' fast
    tokenizers called with `padding="max_length", truncation=True, max_length=L`."""

    def __init__(self, tokenizer, pad_token: str, pad_token_id: int, pad_token_type_id: int = 0,
                 padding_side: str = "right", truncation_side: str = "right",
                 model_max_length: int = VERY_LARGE_INTEGER):
        self.backend = tokenizer
        self.pad_token = pad_token
        self.pad_token_id = pad_token_id
        self.pad_token_type_id = pad_token_type_id
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.model_max_length = model_max_length
        self._length = None

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def _fix_length(self, max_length: int) -> None:
        if self._length != max_length:
            self.backend.enable_truncation(max_length=max_length, stride=0, strategy="longest_first",
                                           direction=self.truncation_side)
            self.backend.enable_padding(length=max_length, direction=self.padding_side, pad_id=self.pad_token_id,
                                        pad_type_id=self.pad_token_type_id, pad_token=self.pad_token)
            self._length = max_length

    def encode(self, prompts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(input_ids, attention_mask)`, both int64 `(batch, max_length)`."""
        prompts = list(prompts)
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be strings")
        self._fix_length(int(max_length))
        encodings = self.backend.encode_batch(prompts, add_special_tokens=True)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64).reshape(len(prompts), max_length)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64).reshape(len(prompts), max_length)
        return ids, mask

    def __call__(self, prompts, padding="max_length", truncation=True, max_length=None, return_tensors="pt"):
        """The one transformers call the text encoders make, for code written against it."""
        if padding != "max_length" or truncation is not True or return_tensors != "pt" or max_length is None:
            raise NotImplementedError("LeanTokenizer only pads to max_length with truncation, as torch tensors")
        ids, mask = self.encode([prompts] if isinstance(prompts, str) else prompts, max_length)
        return {"input_ids": ids, "attention_mask": mask}

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "LeanTokenizer":
        from tokenizers import Tokenizer

        directory = Path(directory)
        if not (directory / "tokenizer.json").is_file():
            raise Unsupported(f"no tokenizer.json in {directory}")
        settings = {}
        if (directory / "special_tokens_map.json").is_file():
            settings.update(json.loads((directory / "special_tokens_map.json").read_text()))
        if (directory / "tokenizer_config.json").is_file():
            settings.update(json.loads((directory / "tokenizer_config.json").read_text()))
        saved = json.loads((directory / "tokenizer.json").read_text())
        backend = Tokenizer.from_file(str(directory / "tokenizer.json"))

        kind = settings.get("tokenizer_class")
        if kind in _BERT:
            cls._as_bert_tokenizer(backend, saved, settings)
        elif kind not in _AS_SAVED:
            raise Unsupported(f"tokenizer_class = {kind!r}")
        cls._check_added_tokens(saved, settings)

        saved_padding = backend.padding or {}
        saved_truncation = backend.truncation or {}
        pad_token = _token_text(settings.get("pad_token")) or saved_padding.get("pad_token")
        if pad_token is None:
            raise Unsupported(f"the tokenizer in {directory} has no pad token")
        pad_id = backend.token_to_id(pad_token)
        if pad_id is None:
            raise Unsupported(f"pad token {pad_token!r} is not in the vocabulary")
        padding_side = settings.get("padding_side") or saved_padding.get("direction") or "right"
        truncation_side = settings.get("truncation_side") or saved_truncation.get("direction") or "right"
        for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if side not in ("right", "left"):
                raise Unsupported(f"{name} = {side!r}")
        if settings.get("split_special_tokens"):
            raise Unsupported("split_special_tokens = True")
        pad_type = settings.get("pad_token_type_id", saved_padding.get("pad_type_id", 0))
        model_max_length = settings.get("model_max_length", settings.get("max_len"))
        return cls(backend, pad_token, pad_id, int(pad_type), padding_side, truncation_side,
                   int(model_max_length) if model_max_length is not None else VERY_LARGE_INTEGER)

    @staticmethod
    def _as_bert_tokenizer(backend, saved: dict, settings: dict) -> None:
        """transformers' BertTokenizer keeps tokenizer.json's vocabulary but rebuilds the rest from
        tokenizer_config.json: a BertNormalizer from its flags, the BertPreTokenizer, and a
        "[CLS] $A [SEP]" template. Do the same, after checking the WordPiece model is the one
        BertTokenizer builds."""
        from tokenizers import normalizers, pre_tokenizers, processors

        model = saved.get("model") or {}
        unk = _token_text(settings.get("unk_token", "[UNK]"))
        if (model.get("type") != "WordPiece" or model.get("continuing_subword_prefix", "##") != "##"
                or model.get("max_input_chars_per_word", 100) != 100 or model.get("unk_token") != unk):
            raise Unsupported("the tokenizer.json model is not the WordPiece model BertTokenizer builds")
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=settings.get("tokenize_chinese_chars", True),
            strip_accents=settings.get("strip_accents"), lowercase=settings.get("do_lower_case", True))
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        cls_token = _token_text(settings.get("cls_token", "[CLS]"))
        sep_token = _token_text(settings.get("sep_token", "[SEP]"))
        cls_id, sep_id = backend.token_to_id(cls_token), backend.token_to_id(sep_token)
        if cls_id is None or sep_id is None:
            raise Unsupported(f"{cls_token!r} or {sep_token!r} is not in the vocabulary")
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls_token}:0 $A:0 {sep_token}:0",
            pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
            special_tokens=[(cls_token, cls_id), (sep_token, sep_id)])

    @staticmethod
    def _check_added_tokens(saved: dict, settings: dict) -> None:
        """tokenizer.json's added tokens are the ones transformers would use: those the config lists
        (when it lists any) agree with them, and every named special token is among them."""
        in_file = {t["id"]: {k: t.get(k) for k in _ADDED_TOKEN_FLAGS} for t in saved.get("added_tokens", [])}
        listed = settings.get("added_tokens_decoder") or {}
        for idx, token in listed.items():
            if not isinstance(token, dict) or in_file.get(int(idx)) != {k: token.get(k) for k in _ADDED_TOKEN_FLAGS}:
                raise Unsupported(f"added token {idx} differs between tokenizer_config.json and tokenizer.json")
        if listed and len(listed) != len(in_file):
            raise Unsupported("tokenizer_config.json and tokenizer.json list different added tokens")
        contents = {t["content"] for t in in_file.values()}
        for key in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
            name = _token_text(settings.get(key))
            if name is not None and name not in contents:
                raise Unsupported(f"{key} {name!r} is not an added token of tokenizer.json")
        if settings.get("additional_special_tokens") or settings.get("extra_special_tokens"):
            extra = settings.get("additional_special_tokens") or settings.get("extra_special_tokens")
            names = extra.values() if isinstance(extra, dict) else extra
            if any(_token_text(t) not in contents for t in names):
                raise Unsupported("an extra special token is not an added token of tokenizer.json")


# --------------------------------------------------------------------------------------------
# The encoder


class LeanTextEncoder(nn.Module):
    """`TextEncoder`'s inference surface on `LeanBert` and `LeanTokenizer`."""

    def __init__(self, model: LeanBert, tokenizer: LeanTokenizer, max_length: int = 77, source: str | None = None):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.source = source

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def with_length(self, max_length: int) -> "LeanTextEncoder":
        """This encoder at another caption length, on the same weights (nothing is loaded or copied)."""
        if int(max_length) == self.max_length:
            return self
        return type(self)(self.model, self.tokenizer, int(max_length), self.source)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer.encode(list(prompts), self.max_length)
        ids, mask = ids.to(self.device), mask.to(self.device)
        return self.model(ids, mask).float(), mask

    @classmethod
    def from_pretrained(cls, directory: str | Path, max_length: int | None = None) -> "LeanTextEncoder":
        settings, weights, tok_dir = locate(directory)
        check_bert_config(Config.read(weights / "config.json"))  # Unsupported before any file is read
        tokenizer = LeanTokenizer.from_pretrained(tok_dir)
        model = LeanBert.from_pretrained(weights)
        return cls(model, tokenizer, text_length(max_length, settings, tokenizer), settings.get("source"))

    def save_pretrained(self, directory: str | Path) -> None:
        """An encoder that reads its weights from a source (a package, a user's folder) saves as the
        library's does: its settings only. Weights of its own are saved by `TextEncoder`."""
        if not self.source:
            raise NotImplementedError("LeanTextEncoder saves only encoders read from a source; load the model "
                                      "without lean=True to save its text encoder's weights")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_NAME).write_text(json.dumps({"max_length": self.max_length, "source": self.source},
                                                        indent=2))


__all__ = ["LeanBert", "LeanTextEncoder", "LeanTokenizer", "check_bert_config", "read_weights"]
