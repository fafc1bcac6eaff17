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


def _run(unet, syn, latents, t, text, mask, kv, present=None):
    with syn.condition(kv, present):
        return unet(latents, t, encoder_hidden_states=text, encoder_attention_mask=mask).sample


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


def test_an_absent_image_is_the_null_image_and_keeps_the_caption_weight(tiny_pipe):
    text_only = _music_unet()
    unet = copy.deepcopy(text_only)
    syn = _synapse(tiny_pipe, unet, alpha="learned")
    assert syn.config.absent == "null-image"
    latents, text, mask = _inputs(tiny_pipe)
    t = torch.tensor([100, 100])
    kv = _image_kv(syn, 2)
    zeros = [(torch.zeros_like(k), torch.zeros_like(v)) for k, v in kv]
    dropped = _run(unet, syn, latents, t, text, mask, kv, torch.tensor([0.0, 1.0]))
    # The dropped sample sees all-zero image features, bit for bit, and so does a batch run with
    # no image at all (a text-only request, guidance's unconditional and caption-only branches).
    assert torch.equal(dropped[0], _run(unet, syn, latents, t, text, mask, zeros)[0])
    assert torch.equal(dropped[0], _run(unet, syn, latents, t, text, mask, None)[0])
    assert torch.equal(dropped[1], _run(unet, syn, latents, t, text, mask, kv)[1])
    # The caption keeps its weight (1 - a): not the text-only network's full weight (a = 0).
    ref = text_only(latents, t, encoder_hidden_states=text, encoder_attention_mask=mask).sample
    assert (dropped[0] - ref[0]).abs().max() > 1e-4
    assert (dropped[1] - dropped[0]).abs().max() > 1e-4


def test_models_saved_before_the_null_image_still_read_an_absent_image_as_alpha_zero(tiny_pipe, tmp_path):
    import json

    text_only = _music_unet()
    unet = copy.deepcopy(text_only)
    syn = _synapse(tiny_pipe, unet, alpha="learned")
    syn.save_pretrained(tmp_path / "syn")
    saved = json.loads((tmp_path / "syn" / "synapse_config.json").read_text())
    del saved["absent"]
    (tmp_path / "syn" / "synapse_config.json").write_text(json.dumps(saved))
    legacy = VisualSynapse.from_pretrained(tmp_path / "syn")
    assert legacy.config.absent == "alpha-zero"
    legacy.attach(unet)
    latents, text, mask = _inputs(tiny_pipe)
    t = torch.tensor([100, 100])
    ref = text_only(latents, t, encoder_hidden_states=text, encoder_attention_mask=mask).sample
    out = _run(unet, legacy, latents, t, text, mask, _image_kv(legacy, 2), torch.tensor([0.0, 1.0]))
    assert torch.allclose(out[0], ref[0], atol=1e-6)
    assert (out[1] - ref[1]).abs().max() > 1e-4
    assert torch.allclose(_run(unet, legacy, latents, t, text, mask, None), ref, atol=1e-6)


def test_a_fresh_synapse_starts_neutral(tiny_pipe):
    """Zero projections: added to a trained text-only model, the picture changes nothing yet."""
    unet = _music_unet()
    syn = _synapse(tiny_pipe, unet, alpha="learned")
    syn.zero_projections()  # as training starts every synapse
    assert all(not layer.to_k_image.weight.detach().any() and not layer.to_v_image.weight.detach().any()
               for layer in syn.layers)
    latents, text, mask = _inputs(tiny_pipe)
    t = torch.tensor([300, 700])
    with_image = _run(unet, syn, latents, t, text, mask, _image_kv(syn, 2))
    assert torch.equal(with_image, _run(unet, syn, latents, t, text, mask, None))
    with torch.no_grad():
        syn.layers[0].to_v_image.weight.fill_(0.1)
    assert (_run(unet, syn, latents, t, text, mask, _image_kv(syn, 2)) - with_image).abs().max() > 1e-4


def test_image_statistics_standardise_features_and_travel_with_the_weights(tiny_pipe, tmp_path):
    unet = _music_unet()
    syn = _synapse(tiny_pipe, unet, alpha="learned")
    g = torch.Generator().manual_seed(1)
    steps = [1, 251, 501]
    # Features with a large part shared by every picture (different at each step), as the T2I model's are.
    shared = [[(10 + 3 * i + torch.randn(16, d, generator=g), -5 + torch.randn(16, d, generator=g))
               for d in syn.config.image_dims] for i in range(len(steps))]
    feats = [[(s_k + 0.5 * torch.randn(200, 16, s_k.shape[-1], generator=g),
               s_v + 2.0 * torch.randn(200, 16, s_v.shape[-1], generator=g)) for s_k, s_v in step] for step in shared]
    syn.set_statistics(steps, lambda i: feats[i])
    assert syn.config.stats_timesteps == steps and syn.config.standardize
    for i in range(len(steps)):
        std = syn.standardize(feats[i], torch.full((200,), i))
        for k, v in std:
            assert k.mean().abs() < 0.02 and v.mean().abs() < 0.02
            assert 0.95 < float(k.std()) < 1.05 and 0.95 < float(v.std()) < 1.05
    # Before standardising, one step's features tell little apart from the shared part.
    k0 = feats[0][0][0]
    assert float(k0.mean(dim=(0, 1)).abs().mean()) > 5
    syn.save_pretrained(tmp_path / "syn")
    again = VisualSynapse.from_pretrained(tmp_path / "syn")
    x = syn.standardize(feats[2], torch.full((200,), 2))
    y = again.standardize(feats[2], torch.full((200,), 2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(x, y))
    # A model folder whose config says "standardised" but whose weights lack the statistics.
    from safetensors.torch import load_file, save_file

    w = load_file(str(tmp_path / "syn" / "synapse.safetensors"))
    save_file({k: v for k, v in w.items() if not k.endswith(("k_mean", "k_std", "v_mean", "v_std"))},
              str(tmp_path / "syn" / "synapse.safetensors"))
    with pytest.raises(MelFusionError, match="image statistics are missing"):
        VisualSynapse.from_pretrained(tmp_path / "syn")


def test_every_decoder_block_of_the_small_music_unet_has_synapse_layers():
    from melfusion.presets import PRESETS

    for name in ("tiny", "small"):
        cfg = preset_config(name)
        unet = UNet2DConditionModel(**cfg["music_unet"])
        t2i = UNet2DConditionModel(**cfg["t2i"]["unet"])
        syn = VisualSynapse.build(SynapseConfig(**cfg["synapse"]), unet, t2i)
        blocks = {int(n.split(".")[1]) for n in syn.config.layers}
        assert blocks == set(range(len(unet.up_blocks))) == {0, 1, 2}, name
        assert len(syn.config.layers) == 6
    assert "small" in PRESETS


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
        # With the synapse switched off, the same layer does read the caption.
        syn.config.enabled = False
        assert (attn(hidden, encoder_hidden_states=text_a, attention_mask=bias_a)
                - attn(hidden, encoder_hidden_states=text_b, attention_mask=bias_b)).abs().max() > 1e-4
        syn.config.enabled = True


def test_gradients_reach_alpha_and_projections_but_never_the_t2i_model(tiny_pipe, example_image):
    from melfusion.images import image_to_tensor

    unet = _music_unet()
    syn = _synapse(tiny_pipe, unet, alpha="learned")
    syn.zero_projections()  # as training starts them: zero, and they still get gradients
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
        # Fresh (zero) projections get gradients too: the image path can leave its neutral start.
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
    assert len(all_layers) == 6 and len(first) == 2
    assert all(n.startswith("up_blocks.0.") for n in first)
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


def test_the_global_path_starts_at_zero_then_adds_the_picture_and_only_the_picture(tiny_pipe, tmp_path):
    from melfusion.lean.unet import LeanUNet

    latents, text, mask = _inputs(tiny_pipe)
    t = torch.tensor([10, 500])
    plain_unet = _music_unet()
    plain = _synapse(tiny_pipe, plain_unet)
    unet = _music_unet()
    dim = unet.time_embedding.linear_2.out_features
    syn = VisualSynapse(SynapseConfig(**{**plain.config.__dict__, "global_dim": dim}))
    syn.load_state_dict(plain.state_dict(), strict=False)
    syn.attach(unet)
    kv = _image_kv(syn, 2)
    present = torch.tensor([1.0, 0.0])
    ref = _run(plain_unet, plain, latents, t, text, mask, kv, present)
    assert float(syn.global_proj.weight.detach().abs().max()) == 0.0
    assert torch.equal(_run(unet, syn, latents, t, text, mask, kv, present), ref)  # zero-started: no change
    with torch.no_grad():
        syn.global_proj.weight.normal_(std=0.5)
    out = _run(unet, syn, latents, t, text, mask, kv, present)
    assert (out[0] - ref[0]).abs().max() > 1e-3          # the picture's sample moves
    assert torch.equal(out[1], ref[1])                    # the absent picture's does not
    assert torch.equal(_run(unet, syn, latents, t, text, mask, None), _run(plain_unet, plain, latents, t, text, mask, None))
    other = _run(unet, syn, latents, t, text, mask, _image_kv(syn, 2, seed=5), present)
    assert (other[0] - out[0]).abs().max() > 1e-3         # another picture, another addition
    # saved and loaded, on the lean runtime too, the global path computes the same
    syn.save_pretrained(tmp_path / "syn")
    unet.save_pretrained(str(tmp_path / "unet"))
    lean = LeanUNet.from_pretrained(tmp_path / "unet")
    back = VisualSynapse.from_pretrained(tmp_path / "syn")
    back.attach(lean)
    assert torch.equal(back.global_proj.weight, syn.global_proj.weight)
    with back.condition(kv, present), torch.no_grad():
        again = lean(latents, t, text, mask).sample
    assert (again - out).abs().max() < 1e-5


def test_a_deep_copy_of_a_network_with_a_global_path_reads_its_own_synapse(tiny_pipe):
    from melfusion.music.ldm import MusicLDM

    unet = _music_unet()
    syn = VisualSynapse.build(SynapseConfig(global_dim=unet.time_embedding.linear_2.out_features), unet,
                              tiny_pipe.t2i.unet)
    music = MusicLDM(unet, syn, {"num_train_timesteps": 1000})
    student = copy.deepcopy(music)
    with torch.no_grad():
        student.synapse.global_proj.weight.normal_(std=0.5)  # only the copy's global path moves
    latents, text, mask = _inputs(tiny_pipe)
    t = torch.tensor([10, 500])
    kv = _image_kv(syn, 2)
    teacher_out = _run(music.unet, music.synapse, latents, t, text, mask, kv)
    student_out = _run(student.unet, student.synapse, latents, t, text, mask, kv)
    with torch.no_grad():
        student.synapse.global_proj.weight.zero_()
    assert torch.equal(_run(student.unet, student.synapse, latents, t, text, mask, kv), teacher_out)
    assert (student_out - teacher_out).abs().max() > 1e-3
