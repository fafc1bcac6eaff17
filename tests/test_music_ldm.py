"""The music LDM's training loss and condition dropout."""
import copy

import pytest
import torch

from melfusion.errors import MelFusionError
from melfusion.images import image_to_tensor
from melfusion.music.ldm import ConditionDropout


def test_condition_dropout_frequencies():
    keep_text, keep_image = ConditionDropout(text=0.1, image=0.2, both=0.15).draw(40000, torch.Generator().manual_seed(0))
    both = ((keep_text == 0) & (keep_image == 0)).float().mean().item()
    text_only = ((keep_text == 0) & (keep_image == 1)).float().mean().item()
    image_only = ((keep_text == 1) & (keep_image == 0)).float().mean().item()
    assert both == pytest.approx(0.15, abs=0.01)
    assert text_only == pytest.approx(0.1, abs=0.01)
    assert image_only == pytest.approx(0.2, abs=0.01)
    with pytest.raises(MelFusionError):
        ConditionDropout(text=0.6, image=0.6)


def _batch(pipe, example_image):
    t2i = pipe.t2i
    pixels = image_to_tensor(example_image, t2i.image_size)[None].repeat(2, 1, 1, 1)
    pixels[1] = pixels[1].flip(-1) * 0.5
    traj = t2i.invert(t2i.encode_image(pixels), 5)
    mel = torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(0)) - 5
    with torch.no_grad():
        latents = pipe.audio_vae.encode(mel)
    text, mask, null_text, null_mask = pipe.encode_prompt(["jazz piano", "folk fiddle tune"])
    return traj, latents, text, mask, null_text, null_mask


@pytest.mark.parametrize("target", ["epsilon", "v_prediction"])
def test_training_loss_is_finite_differentiable_and_can_be_driven_down(tiny_pipe, example_image, target):
    pipe = copy.copy(tiny_pipe)
    from melfusion.music.ldm import MusicLDM
    from melfusion.synapse import VisualSynapse

    unet = copy.deepcopy(tiny_pipe.music.unet)
    synapse = VisualSynapse(copy.deepcopy(tiny_pipe.music.synapse.config))
    synapse.load_state_dict(tiny_pipe.music.synapse.state_dict())
    music = MusicLDM(unet, synapse, dict(tiny_pipe.music.scheduler_config, prediction_type=target))
    pipe.music = music
    traj, latents, text, mask, null_text, null_mask = _batch(pipe, example_image)
    timesteps = torch.tensor([200, 700])

    def loss_now(seed=0):
        return music.training_loss(latents, text, mask, null_text, null_mask,
                                   lambda t: pipe.image_features_for_training(traj, t),
                                   ConditionDropout(0, 0, 0), torch.Generator().manual_seed(seed), timesteps)

    first = loss_now()
    assert first.ndim == 0 and torch.isfinite(first)
    opt = torch.optim.AdamW(list(unet.parameters()) + list(synapse.parameters()), lr=3e-3)
    for _ in range(15):  # the same batch and noise: the loss must fall
        opt.zero_grad()
        loss = loss_now()
        loss.backward()
        opt.step()
    assert synapse.layers[0].alpha_logit.grad is not None
    assert loss_now().item() < 0.7 * first.item()


def test_dropped_text_uses_the_empty_caption(tiny_pipe, example_image):
    music = tiny_pipe.music
    traj, latents, text, mask, null_text, null_mask = _batch(tiny_pipe, example_image)
    feats = lambda t: tiny_pipe.image_features_for_training(traj, t)  # noqa: E731
    args = (latents, text, mask, null_text, null_mask, feats)
    t = torch.tensor([400, 400])
    drop_text = music.training_loss(*args, ConditionDropout(text=1.0, image=0, both=0), torch.Generator().manual_seed(1), t)
    empty = music.training_loss(latents, null_text.expand(2, -1, -1), null_mask.expand(2, -1), null_text, null_mask,
                                feats, ConditionDropout(0, 0, 0), torch.Generator().manual_seed(1), t)
    kept = music.training_loss(*args, ConditionDropout(0, 0, 0), torch.Generator().manual_seed(1), t)
    assert drop_text.item() == pytest.approx(empty.item(), rel=1e-5)
    assert drop_text.item() != pytest.approx(kept.item(), rel=1e-4)
