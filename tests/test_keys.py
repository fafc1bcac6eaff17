"""Key conditioning (melfusion.music.keys): the tonic as a class label of the music UNet."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from melfusion.errors import MelFusionError
from melfusion.lean.unet import LeanUNet
from melfusion.music.keys import (KEY_EMBEDS, MINOR, MODE_KEY_EMBEDS, NO_KEY, draw_keys, has_key, key_name,
                                  parse_key, record_tonic, takes_mode, with_key_embedding, with_mode_embedding)


def test_keys_parse_from_names_and_records():
    assert parse_key("Eb") == 3 and parse_key("F# minor") == 6 and parse_key("gb") == 6
    assert parse_key("none") == NO_KEY and parse_key("random") is None and parse_key(None) is None
    assert record_tonic({"key": "Ab minor"}) == 8 and record_tonic({}) == NO_KEY
    assert key_name(3) == "Eb" and key_name(NO_KEY) == "none"
    for bad in ("H", "E minor major", "", "Cx"):
        with pytest.raises(MelFusionError):
            parse_key(bad)


def test_drawn_keys_follow_the_seed_and_not_the_batch():
    a = draw_keys([torch.Generator().manual_seed(s) for s in range(40)], 40)
    b = draw_keys([torch.Generator().manual_seed(s) for s in range(40)], 40)
    assert a == b and len(set(a)) >= 8 and all(0 <= k < 12 for k in a)
    # A clip's key is its seed's, whether it comes alone or in a batch of generators.
    assert draw_keys(torch.Generator().manual_seed(7), 1) == draw_keys([torch.Generator().manual_seed(7)], 1)


def test_an_added_key_embedding_starts_at_zero_so_the_network_is_unchanged(tiny_pipe):
    unet = copy.deepcopy(tiny_pipe.music.unet).eval()
    assert not has_key(unet)
    keyed = with_key_embedding(unet).eval()
    assert has_key(keyed) and keyed.class_embedding.weight.shape[0] == KEY_EMBEDS
    assert float(keyed.class_embedding.weight.detach().abs().max()) == 0.0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, unet.config.in_channels, 16, 16, generator=g)
    ctx = torch.randn(2, 5, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        ref = unet(x, torch.tensor([900, 10]), encoder_hidden_states=ctx).sample
        out = keyed(x, torch.tensor([900, 10]), encoder_hidden_states=ctx, class_labels=torch.tensor([3, NO_KEY])).sample
    assert torch.equal(ref, out)


def test_the_lean_unet_reads_the_key_as_diffusers_does(tmp_path):
    config = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24, attention_head_dim=4,
                  norm_num_groups=8, num_class_embeds=KEY_EMBEDS)
    torch.manual_seed(0)
    ref = UNet2DConditionModel(**config).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ref.save_pretrained(str(tmp_path))
    lean = LeanUNet.from_pretrained(tmp_path).eval()
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 6, 24, generator=g)
    t, keys = torch.tensor([999, 37]), torch.tensor([0, 7])
    with torch.no_grad():
        a = ref(x, t, encoder_hidden_states=ctx, class_labels=keys).sample
        b = lean(x, t, encoder_hidden_states=ctx, class_labels=keys).sample
        c = lean(x, t, encoder_hidden_states=ctx, class_labels=torch.tensor([5, 7])).sample
    assert (a - b).abs().max() < 1e-5
    assert (c[0] - b[0]).abs().max() > 1e-4 and (c[1] - b[1]).abs().max() < 1e-6  # only the changed key moves
    with pytest.raises(ValueError):
        lean(x, t, encoder_hidden_states=ctx)


@pytest.fixture(scope="module")
def keyed_pipe(tiny_pipe):
    pipe = copy.deepcopy(tiny_pipe)
    pipe.music.unet = with_key_embedding(pipe.music.unet).eval()
    pipe.music.synapse.attach(pipe.music.unet)
    with torch.no_grad():
        pipe.music.unet.class_embedding.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    return pipe


def _compose(pipe, key=None, seed=3):
    return pipe(image=None, prompt="a calm piano piece", duration_s=1.0, num_inference_steps=3,
                generator=torch.Generator().manual_seed(seed), progress=False, key=key)


def test_the_pipeline_composes_in_the_key_it_is_given_or_the_seeds(keyed_pipe, tiny_pipe):
    c, fs = _compose(keyed_pipe, "C"), _compose(keyed_pipe, "F#")
    assert c.keys == ["C"] and fs.keys == ["F#"]
    assert np.abs(c.audio - fs.audio).max() > 1e-3
    assert np.array_equal(_compose(keyed_pipe, "C").audio, c.audio)
    drawn = _compose(keyed_pipe)
    assert drawn.keys == [key_name(draw_keys(torch.Generator().manual_seed(3), 1)[0])]
    assert np.array_equal(_compose(keyed_pipe, drawn.keys[0]).audio, drawn.audio)
    # A model without key conditioning refuses a key, and composes as before without one.
    with pytest.raises(MelFusionError, match="does not take a key"):
        _compose(tiny_pipe, "Eb")
    assert _compose(tiny_pipe).keys == []


def test_the_training_loss_reads_the_key_and_drops_it(keyed_pipe):
    music = keyed_pipe.music
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, music.unet.config.in_channels, 16, 16, generator=g)
    text = torch.randn(3, 5, music.unet.config.cross_attention_dim, generator=g)
    mask, null, null_mask = torch.ones(3, 5), torch.zeros(1, 5, text.shape[2]), torch.ones(1, 5)

    def loss(key, drop=0.0):
        with torch.no_grad():
            return float(music.training_loss(z, text, mask, null, null_mask, None, generator=torch.Generator().manual_seed(1),
                                             timesteps=torch.tensor([500, 500, 500]), key=key, drop_key=drop))
    a, b = loss(torch.tensor([0, 4, 9])), loss(torch.tensor([1, 4, 9]))
    assert a != b and loss(torch.tensor([0, 4, 9])) == a
    # Dropped at probability 1, every key is NO_KEY: the loss of no key at all.
    assert loss(torch.tensor([0, 4, 9]), drop=1.0) == loss(None)


def test_the_demo_says_which_key_it_composed_in(keyed_pipe, tiny_pipe, tmp_path):
    from melfusion.apps.demo import Composer

    example = str(Path(__file__).parents[1] / "examples" / "beach-post.png")
    status = Composer(keyed_pipe, out_root=tmp_path)(example, "calm piano", 1.0, 3, 2, 3.0)[-1]
    drawn = key_name(draw_keys(torch.Generator().manual_seed(3), 1)[0])
    assert f"key of {drawn})" in status
    assert "key of" not in Composer(tiny_pipe, out_root=tmp_path)(example, "calm piano", 1.0, 3, 2, 3.0)[-1]


def test_key_guidance_drops_the_key_from_the_unconditional_pass_only(keyed_pipe, tiny_pipe):
    def compose(pipe, **kw):
        return pipe(image=None, prompt="a calm piano piece", duration_s=1.0, num_inference_steps=3, key="D",
                    generator=torch.Generator().manual_seed(3), progress=False, **kw).audio

    plain = compose(keyed_pipe)
    assert np.array_equal(compose(keyed_pipe, key_guidance=False), plain)
    guided = compose(keyed_pipe, key_guidance=True)
    assert np.abs(guided - plain).max() > 1e-3
    # The model's saved choice is the default.
    keyed_pipe.defaults["key_guidance"] = True
    try:
        assert np.array_equal(compose(keyed_pipe), guided)
    finally:
        del keyed_pipe.defaults["key_guidance"]
    # Unguided (one pass), there is no unconditional pass to drop the key from.
    assert np.array_equal(compose(keyed_pipe, key_guidance=True, guidance_scale=1.0),
                          compose(keyed_pipe, guidance_scale=1.0))
    with pytest.raises(MelFusionError, match="key guidance is for a model that takes a key"):
        tiny_pipe(image=None, prompt="piano", duration_s=1.0, num_inference_steps=2, progress=False, key_guidance=True)


def test_the_mode_label_of_diagnostic_j_parses_and_starts_as_the_tonic(keyed_pipe):
    # The label with the mode: majors 0-11, NO_KEY, minors 13-24; a tonic-only reading is unchanged.
    assert parse_key("Eb minor", with_mode=True) == 3 + MINOR and parse_key("Eb major", with_mode=True) == 3
    assert parse_key("Eb minor") == 3 and parse_key(24, with_mode=True) == 24
    with pytest.raises(MelFusionError):
        parse_key(24)
    assert record_tonic({"key": "Ab minor"}, with_mode=True) == 8 + MINOR
    assert record_tonic({"key": "Ab major"}, with_mode=True) == 8 and record_tonic({}, with_mode=True) == NO_KEY
    assert key_name(3 + MINOR) == "Eb minor" and parse_key(key_name(3 + MINOR), with_mode=True) == 3 + MINOR
    unet = keyed_pipe.music.unet
    wide = with_mode_embedding(copy.deepcopy(unet)).eval()
    assert takes_mode(wide) and not takes_mode(unet) and wide.class_embedding.weight.shape[0] == MODE_KEY_EMBEDS
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, unet.config.in_channels, 16, 16, generator=g)
    ctx = torch.randn(3, 5, unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([900, 10, 400])
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=ctx, class_labels=torch.tensor([3, 7, NO_KEY])).sample
        major = wide(x, t, encoder_hidden_states=ctx, class_labels=torch.tensor([3, 7, NO_KEY])).sample
        minor = wide(x, t, encoder_hidden_states=ctx, class_labels=torch.tensor([3 + MINOR, 7 + MINOR, NO_KEY])).sample
        wide.class_embedding.weight[3 + MINOR] += 1.0   # once trained apart, the minor label differs
        moved = wide(x, t, encoder_hidden_states=ctx, class_labels=torch.tensor([3 + MINOR, 7, NO_KEY])).sample
    assert torch.equal(ref, major) and torch.equal(ref, minor)
    assert (moved[0] - ref[0]).abs().max() > 1e-4 and torch.equal(moved[1:], ref[1:])


def test_a_mode_label_model_composes_in_the_mode_it_is_told(keyed_pipe):
    pipe = copy.deepcopy(keyed_pipe)
    pipe.music.unet = with_mode_embedding(pipe.music.unet).eval()
    pipe.music.synapse.attach(pipe.music.unet)
    with torch.no_grad():
        pipe.music.unet.class_embedding.weight[MINOR:].normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    major, minor = _compose(pipe, "C major"), _compose(pipe, "C minor")
    assert major.keys == ["C"] and minor.keys == ["C minor"]
    assert np.abs(major.audio - minor.audio).max() > 1e-3
    assert np.array_equal(_compose(pipe, "C").audio, major.audio)
