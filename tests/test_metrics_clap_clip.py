"""CLAP and CLIP from transformers directories in the published layout, on tiny random models."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from melfusion.audio.io import resample
from melfusion.errors import MelFusionError
from melfusion.metrics.clap_score import clap_score_from_model
from melfusion.metrics.embedders import load_embedder
from melfusion.metrics.embedders.clap import CLAP
from melfusion.metrics.embedders.clip import CLIP, image_processor_class
from melfusion.metrics.imsm import imsm_from_models

def byte_level_vocab(directory, specials):
    from tokenizers import pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    merges = [("Ġ", "m"), ("u", "s"), ("Ġm", "us")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return vocab


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, RobertaTokenizer

    d = tmp_path_factory.mktemp("clap")
    vocab = byte_level_vocab(d, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer = RobertaTokenizer(vocab=str(d / "vocab.json"), merges=str(d / "merges.txt"), model_max_length=512)
    config = ClapConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=40),
        audio_config=dict(spec_size=256, num_mel_bins=64, patch_size=4, patch_stride=(4, 4), window_size=8,
                          depths=[1, 1], num_attention_heads=[1, 1], patch_embeds_hidden_size=8, hidden_size=16),
        projection_dim=8)
    torch.manual_seed(0)
    model = CLAP(ClapModel(config), ClapFeatureExtractor(truncation="rand_trunc"), tokenizer)
    model.save_pretrained(d)
    return d, model


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    d = tmp_path_factory.mktemp("clip")
    vocab = {}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    vocab["ca"] = len(vocab)
    vocab["cat</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\n")
    tokenizer = CLIPTokenizer(vocab=str(d / "vocab.json"), merges=str(d / "merges.txt"), model_max_length=77)
    processor = image_processor_class()(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    eos = vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=16, eos_token_id=eos,
                         bos_token_id=vocab["<|startoftext|>"], pad_token_id=eos),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32),
        projection_dim=8)
    torch.manual_seed(1)
    model = CLIP(CLIPModel(config), processor, tokenizer)
    model.save_pretrained(d)
    return d, model


def waves(rate, seconds=(1.0, 2.5)):
    rng = np.random.default_rng(0)
    return [rng.normal(size=int(s * rate)).astype(np.float32) * 0.1 for s in seconds]


def images():
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, size=(40, 50, 3), dtype=np.uint8), rng.integers(0, 255, size=(30, 30, 3), dtype=np.uint8)]


TEXTS = ["calm piano music", "a loud rock song with drums and a long caption " * 6]


def test_clap_saves_the_published_layout_and_round_trips(clap_dir):
    d, original = clap_dir
    names = {p.name for p in d.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "vocab.json", "merges.txt"} <= names
    loaded = load_embedder(f"clap:{d}")
    assert isinstance(loaded, CLAP) and loaded.sample_rate == 48000 and loaded.dim == 8
    assert loaded.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    audio = loaded.embed_audio(waves(48000))
    text = loaded.embed_text(TEXTS)
    assert audio.shape == (2, 8) and text.shape == (2, 8)
    assert np.allclose(np.linalg.norm(audio, axis=1), 1) and np.allclose(np.linalg.norm(text, axis=1), 1)
    assert np.array_equal(audio, original.embed_audio(waves(48000)))
    assert np.array_equal(text, original.embed_text(TEXTS))


def test_clap_resamples_16khz_audio_to_48khz(clap_dir):
    model = clap_dir[1]
    at_16k = waves(16000)
    by_hand = model.embed_audio([resample(w, 16000, 48000) for w in at_16k])
    assert np.allclose(model.embed_audio(at_16k, sample_rate=16000), by_hand, atol=1e-6)
    assert not np.allclose(model.embed_audio(at_16k), by_hand, atol=1e-3)


def test_clap_crops_of_long_clips_are_reproducible(clap_dir):
    model = clap_dir[1]
    long = waves(48000, seconds=(11.0,))
    np.random.seed(123)
    first = model.embed_audio(long)
    assert np.array_equal(first, model.embed_audio(long))


def test_clap_with_a_fusion_preprocessor_but_an_unfused_model_still_loads(clap_dir, tmp_path):
    d, original = clap_dir
    for p in d.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    cfg = json.loads((tmp_path / "preprocessor_config.json").read_text())
    cfg["truncation"] = "fusion"
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    assert load_embedder(f"clap:{tmp_path}").embed([np.zeros(4800, np.float32)]).shape == (1, 8)


def test_clip_saves_the_published_layout_and_round_trips(clip_dir, tmp_path):
    d, original = clip_dir
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "vocab.json"} <= {p.name for p in d.iterdir()}
    loaded = load_embedder(f"clip:{d}")
    assert isinstance(loaded, CLIP) and loaded.dim == 8
    pics = images()
    Image.fromarray(pics[0]).save(tmp_path / "cover.png")
    from_arrays = loaded.embed_image(pics)
    assert from_arrays.shape == (2, 8) and np.allclose(np.linalg.norm(from_arrays, axis=1), 1)
    assert np.array_equal(from_arrays, original.embed_image(pics))
    assert np.allclose(loaded.embed_image([tmp_path / "cover.png"]), from_arrays[:1], atol=1e-6)
    assert np.allclose(loaded.embed_image([Image.fromarray(pics[1])]), from_arrays[1:], atol=1e-6)
    text = loaded.embed_text(TEXTS)  # the long caption is truncated to the 16 positions
    assert text.shape == (2, 8) and np.array_equal(text, original.embed_text(TEXTS))


def test_imsm_and_clap_score_run_end_to_end_on_the_tiny_models(clap_dir, clip_dir):
    clap, clip = clap_dir[1], clip_dir[1]
    out = imsm_from_models(clip, clap, images(), TEXTS, waves(16000), sample_rate=16000)
    assert out["scores"].shape == (2,) and 0 < out["imsm"] < 1
    assert -1 <= clap_score_from_model(clap, TEXTS, waves(16000), sample_rate=16000) <= 1


@pytest.mark.parametrize("kind", ["clap", "clip"])
def test_missing_or_malformed_directories_give_one_line_errors(kind, tmp_path, clap_dir, clip_dir):
    cases = [tmp_path / "absent", tmp_path]  # missing directory; directory without config.json
    other = clip_dir[0] if kind == "clap" else clap_dir[0]  # the other model's directory
    broken = tmp_path / "broken"
    broken.mkdir()
    source = clap_dir[0] if kind == "clap" else clip_dir[0]
    for p in source.iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    (broken / "model.safetensors").write_bytes(b"garbage")
    untokenized = tmp_path / "untokenized"
    untokenized.mkdir()
    for p in source.iterdir():
        if p.name not in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"):
            (untokenized / p.name).write_bytes(p.read_bytes())
    expected = ["not found", "no config.json", "not " + kind.upper(), "cannot load", "no " + kind.upper() + " tokenizer"]
    for path, words in zip(cases + [other, broken, untokenized], expected):
        with pytest.raises(MelFusionError, match=words) as info:
            load_embedder(f"{kind}:{path}")
        assert "\n" not in str(info.value), str(info.value)


def test_bad_inputs_are_refused(clip_dir, clap_dir):
    with pytest.raises(MelFusionError, match="not found"):
        clip_dir[1].embed_image(["/nonexistent.png"])
    with pytest.raises(MelFusionError, match="single string"):
        clap_dir[1].embed_text("one caption")
