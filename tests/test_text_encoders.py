"""Text encoders load from local directories and return `(batch, max_length, hidden)` plus a mask."""
import json

import pytest
import torch

from melfusion.errors import MelFusionError
from melfusion.text.encoders import MINILM_PACKAGE, TextEncoder, byte_tokenizer


def _tiny_t5(tokenizer):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8))


def test_t5_encoder_saves_and_loads_from_a_directory(tmp_path):
    tok = byte_tokenizer(24)
    enc = TextEncoder(_tiny_t5(tok), tok, max_length=24)
    emb, mask = enc.encode(["jazz", "a much longer caption about a brass band"])
    assert emb.shape == (2, 24, 32) and mask.shape == (2, 24)
    assert mask.sum(1).tolist() == [4, 24]  # 4 bytes; the long one is truncated at 24
    enc.save_pretrained(tmp_path / "t5")
    assert json.loads((tmp_path / "t5" / "config.json").read_text())["model_type"] == "t5"
    again = TextEncoder.from_pretrained(tmp_path / "t5")
    assert type(again.model).__name__ == "T5EncoderModel"
    emb2, mask2 = again.encode(["jazz", "a much longer caption about a brass band"])
    assert torch.equal(mask, mask2)
    assert torch.allclose(emb, emb2, atol=1e-6)


def _tiny_clip_in_sd_layout(root):
    """A random CLIP text encoder with a BPE tokenizer, saved as Stable Diffusion keeps them."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    letters = list("abcdefghijklmnopqrstuvwxyz")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in letters:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (root / "tokenizer").mkdir(parents=True)
    (root / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (root / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(root / "tokenizer" / "vocab.json"), str(root / "tokenizer" / "merges.txt"),
                        pad_token="<|endoftext|>")
    tok.save_pretrained(str(root / "tokenizer"))
    torch.manual_seed(0)
    model = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                         bos_token_id=0, eos_token_id=1, pad_token_id=1))
    model.save_pretrained(str(root / "text_encoder"))
    return model, tok


def test_clip_text_encoder_loads_from_stable_diffusion_layout(tmp_path):
    model, tok = _tiny_clip_in_sd_layout(tmp_path)
    enc = TextEncoder.from_pretrained(tmp_path / "text_encoder")
    assert type(enc.model).__name__ == "CLIPTextModel"
    assert enc.max_length == 77 and enc.hidden_size == 32
    emb, mask = enc.encode(["calm piano"])
    assert emb.shape == (1, 77, 32)
    ids = tok(["calm piano"], padding="max_length", max_length=77, return_tensors="pt")
    ref = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state
    assert torch.allclose(emb, ref, atol=1e-6)


def test_minilm_from_the_package_is_a_real_pretrained_encoder(tmp_path):
    (tmp_path / "te").mkdir()
    (tmp_path / "te" / "melfusion_text.json").write_text(json.dumps({"source": MINILM_PACKAGE, "max_length": 32}))
    enc = TextEncoder.from_pretrained(tmp_path / "te")
    assert enc.hidden_size == 384
    emb, mask = enc.encode(["a jazz trio with piano and double bass",
                            "piano jazz played by a small trio with an upright bass",
                            "distorted heavy metal guitars and double kick drums"])
    assert emb.shape == (3, 32, 384)

    def sentence(i):  # mean over real tokens, as sentence-transformers pools
        m = mask[i].bool()
        v = emb[i][m].mean(0)
        return v / v.norm()

    same = float(sentence(0) @ sentence(1))
    different = float(sentence(0) @ sentence(2))
    assert same > different + 0.2  # random weights would not order these
    # Saving keeps a reference to the package, not a 90 MB copy of its weights.
    enc.save_pretrained(tmp_path / "saved")
    assert not list((tmp_path / "saved").glob("*.safetensors"))


def test_missing_text_encoder_directory_is_a_clear_error(tmp_path):
    with pytest.raises(MelFusionError, match="not found"):
        TextEncoder.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MelFusionError, match="config.json"):
        TextEncoder.from_pretrained(tmp_path / "empty")


def test_the_small_preset_reads_a_70_token_caption_whole():
    from melfusion.presets import build_text_encoder, preset_config

    spec = preset_config("small")["text"]
    enc = build_text_encoder(spec)
    assert enc.max_length == 77
    words = ("an upbeat bossa nova tune with nylon guitar, brushed snare, warm upright bass and a "
             "gentle flute melody drifting over soft chords, recorded in a small room at night by a "
             "quartet of old friends, relaxed and swinging at a moderate tempo of about one hundred beats, "
             "with a short piano solo in the middle and a quiet fade, ending in jazz")
    n_tokens = len(enc.tokenizer(words)["input_ids"])  # with the [CLS] and [SEP] tokens
    assert 68 <= n_tokens <= 77
    emb, mask = enc.encode([words, words.replace("ending in jazz", "ending in metal")])
    assert int(mask[0].sum()) == n_tokens  # nothing cut
    # The last word still reaches the encoder: changing it changes the embedding of its token.
    last = n_tokens - 2
    assert (emb[0, last] - emb[1, last]).abs().max() > 1e-2
