"""Loading transformers checkpoints (CLAP, CLIP) from a local directory with one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

from melfusion.errors import MelFusionError


TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_model_dir(directory: str | Path, what: str, model_types: tuple[str, ...]) -> Path:
    """The directory, after checking its config.json names one of `model_types`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MelFusionError(f"{what} directory not found: {directory}")
    config = directory / "config.json"
    if not config.is_file():
        raise MelFusionError(f"no config.json in {what} directory {directory}")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (ValueError, AttributeError) as exc:
        raise MelFusionError(f"unreadable config.json in {directory}: {_first_line(exc)}") from None
    if model_type not in model_types:
        raise MelFusionError(f"{directory} holds a {model_type!r} model, not {what} ({', '.join(model_types)})")
    return directory


def require_files(directory: Path, what: str, alternatives: tuple[tuple[str, ...], ...]) -> None:
    """Refuse a directory that has none of the file sets in `alternatives` (transformers would
    otherwise build an empty tokenizer or a default processor without a word)."""
    for names in alternatives:
        if all((directory / n).is_file() for n in names):
            return
    wanted = " or ".join(" + ".join(names) for names in alternatives)
    raise MelFusionError(f"no {what} files in {directory} (expected {wanted})")


def load_part(loader, directory: Path, what: str):
    """`loader(str(directory))`, offline, with any failure turned into a one-line MelFusionError."""
    try:
        return loader(str(directory), local_files_only=True)
    except MelFusionError:
        raise
    except Exception as exc:
        raise MelFusionError(f"cannot load {what} from {directory}: {_first_line(exc)}") from None


def max_text_tokens(tokenizer, positions: int, reserved: int = 0) -> int:
    """Longest token sequence both the tokenizer and the position table allow."""
    limit = int(getattr(tokenizer, "model_max_length", positions) or positions)
    return max(1, min(limit, positions - reserved))


def embed_texts(model, tokenizer, texts, batch_size: int, max_tokens: int):
    """Unit-length text embeddings `(n, dim)` from a CLIP- or CLAP-style model's text tower."""
    import numpy as np
    import torch

    from melfusion.metrics.embedders.base import check_texts, unit_rows

    texts = check_texts(texts)
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_tokens,
                              return_tensors="pt")
            feats = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            out.append(feats.pooler_output.float().numpy())
    return unit_rows(np.concatenate(out))
