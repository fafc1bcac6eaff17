"""The lean UNet computes what diffusers' UNet2DConditionModel computes, processors included."""
import subprocess
import sys

import pytest
import torch
from diffusers import UNet2DConditionModel

from melfusion.lean import Unsupported
from melfusion.lean.unet import LeanUNet

DEFAULT = "melfusion/assets/default"


def _pair(tmp_path, **config):
    torch.manual_seed(0)
    ref = UNet2DConditionModel(**config).eval()
    with torch.no_grad():  # trained-looking weights: no zero-initialised output layers
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ref.save_pretrained(str(tmp_path))
    return ref, LeanUNet.from_pretrained(tmp_path)


def _inputs(unet, b=2, frames=32, mels=16, tokens=12):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, unet.config.in_channels, frames, mels, generator=g)
    ctx = torch.randn(b, tokens, unet.config.cross_attention_dim, generator=g)
    mask = torch.ones(b, tokens)
    mask[0, tokens // 3:] = 0
    return x, torch.tensor([999, 37][:b]), ctx, mask


SMALL = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
             down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
             cross_attention_dim=24, attention_head_dim=4, norm_num_groups=8)


@pytest.mark.parametrize("part", ["unet", "t2i/unet"])
def test_the_shipped_unets_match_diffusers_bit_for_bit(part):
    ref = UNet2DConditionModel.from_pretrained(f"{DEFAULT}/{part}").eval()
    lean = LeanUNet.from_pretrained(f"{DEFAULT}/{part}")
    x, t, ctx, mask = _inputs(ref, frames=64 if part == "unet" else 16, tokens=32)
    ctx = ctx[..., :384] if ctx.shape[-1] >= 384 else torch.randn(2, 32, 384)
    # the shipped music UNet reads the tonic (melfusion.music.keys): two different keys
    kw = {"class_labels": torch.tensor([3, 12])} if ref.config.num_class_embeds else {}
    with torch.no_grad():
        a = ref(x, t, encoder_hidden_states=ctx, encoder_attention_mask=mask, **kw).sample
        b = lean(x, t, ctx, mask, **kw).sample
        c = lean(x, t[:1].reshape(()), ctx, mask, **kw).sample  # one timestep for the whole batch
        d = ref(x, t[0], encoder_hidden_states=ctx, encoder_attention_mask=mask, **kw).sample
    assert a.abs().max() > 0.5
    assert (a - b).abs().max() < 1e-5 and (c - d).abs().max() < 1e-5
    assert set(lean.attn_processors) == set(ref.attn_processors)
    assert lean.config.block_out_channels == list(ref.config.block_out_channels)


@pytest.mark.parametrize("over", [
    {},
    dict(layers_per_block=2, transformer_layers_per_block=2),
    dict(use_linear_projection=True, only_cross_attention=[True, False], flip_sin_to_cos=False, freq_shift=1),
    dict(up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), mid_block_scale_factor=1.5),
    dict(block_out_channels=(32, 64, 64), down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
         up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2, attention_head_dim=(2, 4, 8)),
])
def test_random_configs_match_diffusers(tmp_path, over):
    ref, lean = _pair(tmp_path, **(SMALL | over))
    for frames in (32, 20):  # 20 does not halve evenly: the decoder follows the encoder's sizes
        x, t, ctx, mask = _inputs(ref, frames=frames)
        with torch.no_grad():
            a = ref(x, t, encoder_hidden_states=ctx, encoder_attention_mask=mask).sample
            b = lean(x, t, ctx, mask).sample
            e = lean(x, t, ctx, None).sample
        assert a.shape == b.shape == x.shape and a.abs().max() > 0.05
        assert (a - b).abs().max() < 1e-5
        assert (e - b).abs().max() > 1e-4  # the mask matters: it is applied


def test_melfusion_processors_work_in_the_lean_unet(tmp_path):
    """The T2I capture and the visual synapse install by name and give the library's results."""
    from melfusion.synapse import SynapseConfig, VisualSynapse
    from melfusion.t2i.capture import KVCaptureProcessor, KVStore, decoder_self_attention_names

    ref, lean = _pair(tmp_path / "m", **(SMALL | dict(up_block_types=("CrossAttnUpBlock2D",) * 2)))
    t2i_ref, t2i_lean = _pair(tmp_path / "i", **SMALL)
    assert decoder_self_attention_names(t2i_lean) == decoder_self_attention_names(t2i_ref)
    captured = []
    for unet in (t2i_ref, t2i_lean):
        names = decoder_self_attention_names(unet)
        store = KVStore(len(names))
        unet.set_attn_processor(dict(unet.attn_processors) | {n: KVCaptureProcessor(store, i) for i, n in enumerate(names)})
        x, t, ctx, _ = _inputs(unet)
        store.start(12)
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=ctx)
        captured.append(store.stop())
    assert all((a - b).abs().max() < 1e-5 for (ka, va), (kb, vb) in zip(*captured) for a, b in ((ka, kb), (va, vb)))
    torch.manual_seed(3)
    syn = VisualSynapse.build(SynapseConfig(), ref, t2i_ref)
    with torch.no_grad():
        for layer in syn.layers:
            layer.to_k_image.weight.normal_()
            layer.to_v_image.weight.normal_()
    assert len(syn.config.layers) == 4  # 2 decoder blocks x 2 layers
    outs = []
    kv = [(torch.randn(2, 12, d), torch.randn(2, 12, d)) for d in syn.config.image_dims]
    for unet in (ref, lean):
        syn.attach(unet)
        x, t, ctx, mask = _inputs(unet)
        with torch.no_grad(), syn.condition(kv, torch.tensor([1.0, 0.0])):
            outs.append(unet(x, t, encoder_hidden_states=ctx, encoder_attention_mask=mask).sample)
    assert (outs[0] - outs[1]).abs().max() < 1e-5
    with torch.no_grad(), syn.condition(None):
        plain = lean(x, t, ctx, mask).sample
    assert (plain - outs[1]).abs()[0].max() > 1e-4  # the picture reaches the lean UNet's output


@pytest.mark.parametrize("over,what", [
    (dict(resnet_time_scale_shift="scale_shift"), "resnet_time_scale_shift"),
    (dict(down_block_types=("SimpleCrossAttnDownBlock2D", "DownBlock2D")), "down block"),
    (dict(class_embed_type="timestep"), "class_embed_type"),
    (dict(mid_block_type="UNetMidBlock2DSimpleCrossAttn"), "mid_block_type"),
])
def test_configs_it_does_not_cover_are_refused(tmp_path, over, what):
    UNet2DConditionModel(**(SMALL | over)).save_pretrained(str(tmp_path))
    with pytest.raises(Unsupported, match=what):
        LeanUNet.from_pretrained(tmp_path)


def test_loading_and_running_it_imports_no_diffusers():
    code = ("import sys, torch; from melfusion.lean.unet import LeanUNet; u = LeanUNet.from_pretrained("
            f"'{DEFAULT}/unet'); u(torch.zeros(1, 8, 32, 16), 10, torch.zeros(1, 4, 384), class_labels=torch.tensor([0]));"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_deferred_weights_are_read_on_the_first_pass_and_give_the_same_function(tmp_path):
    ref, eager = _pair(tmp_path, **SMALL)
    lazy = LeanUNet.from_pretrained(tmp_path, defer=True)
    assert lazy.weights_deferred() and lazy.conv_in.weight.is_meta  # nothing read at load
    assert sum(p.numel() for p in lazy.parameters()) == sum(p.numel() for p in eager.parameters())
    x, t, ctx, mask = _inputs(ref)
    with torch.no_grad():
        a = eager(x, t, ctx, mask).sample
        b = lazy(x, t, ctx, mask).sample
        c = lazy(x + 1, t, ctx, mask).sample  # a second pass: the weights are read once
    assert not lazy.weights_deferred() and not lazy.conv_in.weight.is_meta
    assert not any(p.requires_grad for p in lazy.parameters()) and not lazy.training
    assert a.abs().max() > 0.05 and torch.equal(a, b)
    assert (c - b).abs().max() > 1e-3


def test_deferred_weights_that_do_not_fit_are_refused_at_load(tmp_path):
    from safetensors.torch import load_file, save_file

    _pair(tmp_path, **SMALL)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    state["conv_in.weight"] = state["conv_in.weight"][:, :2].contiguous()
    save_file(state, str(path))
    with pytest.raises(Unsupported, match="conv_in.weight has shape"):
        LeanUNet.from_pretrained(tmp_path, defer=True)
    del state["conv_in.bias"]
    save_file(state, str(path))
    with pytest.raises(Unsupported, match="do not match"):
        LeanUNet.from_pretrained(tmp_path, defer=True)
