"""The visual synapse blends image keys/values into the music decoder's cross-attention."""
import copy

import pytest
import torch
from diffusers import UNet2DConditionModel

from melfusion.errors import MelFusionError
from melfusion.presets import preset_config
from melfusion.synapse import SynapseConfig, VisualSynapse, pair_layers


def _music_unet(seed=0):
    torch.manual_seed(seed)
    return UNet2DConditionModel(**preset_config("tiny")["music_unet"])


def _inputs(tiny_pipe, captions=("a jazz trio", "metal riffs and blast beats")):
    text, mask = tiny_pipe.text_encoder.encode(list(captions))
    latents = torch.randn(len(captions), 8, 16, 16, generator=torch.Generator().manual_seed(0))
    return latents, text, mask


def _image_kv(synapse, batch, tokens=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, tokens, d, generator=g), torch.randn(batch, tokens, d, generator=g))
            for d in synapse.config.image_dims]


def _synapse(tiny_pipe, unet, **cfg):
    syn = VisualSynapse.build(SynapseConfig(**cfg), unet, tiny_pipe.t2i.unet)
    syn.attach(unet)
    return syn


def test_alpha_zero_gives_exactly_the_text_only_unet(tiny_pipe):
    text_only = _music_unet()
    unet = copy.deepcopy(text_only)
    syn = _synapse(tiny_pipe, unet, alpha=0.0)
    latents, text, mask = _inputs(tiny_pipe)
    t = torch.tensor([10, 500])
    ref = text_only(latents, t, encoder_hidden_states=text, encoder_attention_mask=mask).sample
    with syn.condition(_image_kv(syn, 2)):
        out = unet(latents, t, encoder_hidden_states=text, encoder_attention_mask=mask).sample
    assert torch.allclose(out, ref, atol=1e-6)
    # And the image does matter once alpha is above zero.
    unet_half = copy.deepcopy(text_only)
    syn_half = _synapse(tiny_pipe, unet_half, alpha=0.5)
    with syn_half.condition(_image_kv(syn_half, 2)):
        out_half = unet_half(latents, t, encoder_hidden_states=text, encoder_attention_mask=mask).sample
    assert (out_half - ref).abs().max() > 1e-4


def test_dropping_the_image_per_sample_reduces_to_text_only(tiny_pipe):
    text_only = _music_unet()
    unet = copy.deepcopy(text_only)
    syn = _synapse(tiny_pipe, unet, alpha="learned")
    latents, text, mask = _inputs(tiny_pipe)
    t = torch.tensor([100, 100])
    ref = text_only(latents, t, encoder_hidden_states=text, encoder_attention_mask=mask).sample
    with syn.condition(_image_kv(syn, 2), image_present=torch.tensor([0.0, 1.0])):
        out = unet(latents, t, encoder_hidden_states=text, encoder_attention_mask=mask).sample
    assert torch.allclose(out[0], ref[0], atol=1e-6)
    assert (out[1] - ref[1]).abs().max() > 1e-4


def test_alpha_one_makes_synapse_layers_ignore_the_caption(tiny_pipe):
    unet = _music_unet()
    syn = _synapse(tiny_pipe, unet, alpha=1.0)
    modules = dict(unet.named_modules())
    kv = _image_kv(syn, 1)
    text_a, mask_a = tiny_pipe.text_encoder.encode(["calm piano"])
    text_b, mask_b = tiny_pipe.text_encoder.encode(["loud distorted guitars with shouting"])
    assert not torch.allclose(text_a, text_b)
    for name in syn.config.layers:
        attn = modules[name.removesuffix(".processor")]
        hidden = torch.randn(1, 37, attn.to_q.in_features, generator=torch.Generator().manual_seed(3))
        bias_a = (1 - mask_a[:, None].float()) * -10000.0
        bias_b = (1 - mask_b[:, None].float()) * -10000.0
        with syn.condition(kv):
            out_a = attn(hidden, encoder_hidden_states=text_a, attention_mask=bias_a)
            out_b = attn(hidden, encoder_hidden_states=text_b, attention_mask=bias_b)
        assert torch.allclose(out_a, out_b, atol=1e-6)
        # Without the image, the same layer does read the caption.
        assert (attn(hidden, encoder_hidden_states=text_a, attention_mask=bias_a)
                - attn(hidden, encoder_hidden_states=text_b, attention_mask=bias_b)).abs().max() > 1e-4


def test_gradients_reach_alpha_and_projections_but_never_the_t2i_model(tiny_pipe, example_image):
    from melfusion.images import image_to_tensor

    unet = _music_unet()
    syn = _synapse(tiny_pipe, unet, alpha="learned")
    t2i = tiny_pipe.t2i
    z0 = t2i.encode_image(image_to_tensor(example_image, t2i.image_size)[None].repeat(2, 1, 1, 1))
    traj = t2i.invert(z0, 3, capture_tokens=tiny_pipe.text_encoder.max_length)
    latents, text, mask = _inputs(tiny_pipe)
    layer_index = {n: i for i, n in enumerate(t2i.layer_names)}
    kv = [traj.features[2][layer_index[p]] for p in syn.config.partners]
    assert not any(k.requires_grad for k, _ in kv)
    with syn.condition(kv):
        out = unet(latents, torch.tensor([300, 300]), encoder_hidden_states=text, encoder_attention_mask=mask).sample
    out.square().mean().backward()
    for layer in syn.layers:
        assert layer.alpha_logit.grad is not None and layer.alpha_logit.grad.abs() > 0
        assert layer.to_k_image.weight.grad.abs().sum() > 0
        assert layer.to_v_image.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in t2i.parameters())


def test_alpha_stays_in_the_unit_interval():
    syn_cfg = SynapseConfig(alpha="learned", image_dims=[4, 4], music_dims=[8, 8], layers=["a", "b"], partners=["x", "y"])
    syn = VisualSynapse(syn_cfg)
    assert syn.alphas() == pytest.approx([0.5, 0.5])
    with torch.no_grad():
        syn.layers[0].alpha_logit.fill_(80.0)
        syn.layers[1].alpha_logit.fill_(-80.0)
    a = syn.alphas()
    assert 0.0 <= a[1] < 1e-6 and 1 - 1e-6 < a[0] <= 1.0
    with pytest.raises(MelFusionError, match=r"\[0, 1\]"):
        VisualSynapse(SynapseConfig(alpha=1.5))


def test_synapse_blocks_are_configurable(tiny_pipe):
    unet = _music_unet()
    all_layers = VisualSynapse.build(SynapseConfig(), unet, tiny_pipe.t2i.unet).config.layers
    first = VisualSynapse.build(SynapseConfig(blocks=[1]), unet, tiny_pipe.t2i.unet).config.layers
    assert len(all_layers) == 4 and len(first) == 2
    assert all(n.startswith("up_blocks.1.") for n in first)
    with pytest.raises(MelFusionError, match="block 5 does not exist"):
        VisualSynapse.build(SynapseConfig(blocks=[5]), unet, tiny_pipe.t2i.unet)


def test_layers_pair_by_depth_and_proportionally():
    assert pair_layers(["m1", "m2", "m3"], ["i1", "i2", "i3"]) == ["i1", "i2", "i3"]
    assert pair_layers(["m1", "m2", "m3", "m4"], ["i1", "i2"]) == ["i1", "i1", "i2", "i2"]
    assert pair_layers(["m1", "m2"], ["i1", "i2", "i3", "i4"]) == ["i1", "i3"]


def test_paper_scale_pairs_nine_layers_one_to_one():
    from melfusion import presets

    pipe = presets.build("paper")
    cfg = pipe.music.synapse.config
    assert len(cfg.layers) == 9 and len(set(cfg.partners)) == 9
    # Lowest resolution first on both sides: 1280-wide layers pair with 1280-wide layers.
    assert cfg.music_dims == cfg.image_dims == [1280] * 3 + [640] * 3 + [320] * 3


def test_synapse_saves_and_loads(tiny_pipe, tmp_path):
    unet = _music_unet()
    syn = _synapse(tiny_pipe, unet, alpha="learned")
    with torch.no_grad():
        syn.layers[0].alpha_logit.fill_(1.3)
    syn.save_pretrained(tmp_path / "syn")
    again = VisualSynapse.from_pretrained(tmp_path / "syn")
    assert again.alphas() == pytest.approx(syn.alphas())
    assert again.config.partners == syn.config.partners
    for a, b in zip(again.state_dict().values(), syn.state_dict().values()):
        assert torch.equal(a, b)
