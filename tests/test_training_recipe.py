"""The small default's recipe: a text-only pretrain on latent crops, then MeLFusion fine-tuned
from it with the image path starting neutral, standardised image features, its own learning
rates, more weight on high noise; and the checks that refuse a wrong resume or crop up front."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from melfusion.errors import MelFusionError
from melfusion.music.ldm import sample_timesteps
from training_fixtures import make_manifest, music_config


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_manifest(tmp_path_factory.mktemp("data"))


def _config(tmp_path, manifest, name, **over):
    return music_config(tmp_path, manifest, name, **over)


def _keyed_manifest(tmp_path, manifest, keys):
    """The fixture manifest with record i in key keys[i % len(keys)] (absolute media paths)."""
    keyed = tmp_path / "keyed.jsonl"
    rows = [json.loads(line) for line in Path(manifest).read_text().splitlines()]
    for i, r in enumerate(rows):
        r["key"] = keys[i % len(keys)]
        for k in ("image", "audio"):
            r[k] = str(Path(manifest).parent / r[k])
    keyed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return keyed


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, manifest):
    """A text-only music model trained on 32-frame crops of the 112-frame clips."""
    from melfusion.training.trainer import train

    tmp = tmp_path_factory.mktemp("pretrain")
    return tmp, train(_config(tmp, manifest, "pretrain", conditioning="text", crop_frames=32), progress=False)


def test_the_fine_tune_starts_exactly_where_the_text_only_pretrain_ended(pretrained, manifest):
    from melfusion.pipeline import MelFusionPipeline
    from melfusion.training.stages import make_stage, stage_data
    from melfusion.training.trainer import load_entries, load_init

    tmp, model = pretrained
    base = MelFusionPipeline.from_pretrained(model)
    assert base.conditioning == "text" and base.music.synapse.config.absent == "null-image"
    cfg = _config(tmp, manifest, "finetune", init=str(model), conditioning="synapse", crop_frames=32)
    pipe = load_init(cfg)
    train_rows, val_rows = load_entries(cfg)
    stage = make_stage(cfg, pipe, stage_data(cfg, pipe, train_rows, val_rows, Path(cfg.cache_dir), progress=False))
    data = stage.data
    idx = torch.arange(2)
    t = torch.tensor([900, 300])
    latents = torch.randn(2, 8, 28, 16, generator=torch.Generator().manual_seed(0))
    text, mask = data["train_text"][idx], data["train_mask"][idx]
    feats = stage._features("train", idx)(t)
    with torch.no_grad():
        tuned = pipe.music.predict(latents, t, text, mask, feats)
        before = base.music.predict(latents, t, text, mask, None)
    assert torch.equal(tuned, before)
    # What the synapse reads is standardised by statistics of the training features.
    syn = pipe.music.synapse
    assert syn.config.standardize and syn.config.stats_timesteps == data["traj_timesteps"].tolist()[1:]
    k = feats[0][0]
    assert float(k.mean().abs()) < 0.5 and 0.3 < float(k.std()) < 3.0


def test_fine_tuned_model_keeps_its_statistics_and_inverts_with_the_trained_steps(pretrained, manifest):
    from melfusion.pipeline import MelFusionPipeline
    from melfusion.training.trainer import train

    tmp, model = pretrained
    cfg = _config(tmp, manifest, "tuned", init=str(model), conditioning="synapse", crop_frames=32,
                  synapse_lr=1e-2, alpha_lr=1e-2, drop_text=0.3, high_noise_weight=1.0)
    pipe = MelFusionPipeline.from_pretrained(train(cfg, progress=False))
    syn = pipe.music.synapse
    assert syn.config.stats_timesteps and all(hasattr(layer, "k_mean") for layer in syn.layers)
    assert any(layer.to_v_image.weight.abs().max() > 0 for layer in syn.layers)  # left its zero start
    trained_steps = len(syn.config.stats_timesteps)
    assert pipe.defaults["inversion_steps"] == trained_steps == 4
    # Two denoising steps still invert with the four the model was trained on; other counts are refused.
    assert pipe.inversion_steps_for(None, 2) == trained_steps
    image = str(manifest.parent / "i0.png")
    out = pipe(image=image, prompt="strings", duration_s=1.0, num_inference_steps=2, progress=False)
    assert out.audio.shape == (16000,)
    with pytest.raises(MelFusionError, match="trained on 4-step image inversions"):
        pipe(image=image, prompt="strings", duration_s=1.0, inversion_steps=3, progress=False)


def test_a_resume_onto_another_architecture_or_caption_length_is_refused(tmp_path, manifest, pretrained):
    from melfusion.training.trainer import train

    _, model = pretrained
    init = tmp_path / "init"
    shutil.copytree(model, init)
    cfg = _config(tmp_path, manifest, "run", init=str(init), conditioning="text", steps=2)
    train(cfg, progress=False)
    settings = init / "text_encoder" / "melfusion_text.json"
    s = json.loads(settings.read_text())
    s["max_length"] = 12
    settings.write_text(json.dumps(s))
    more = _config(tmp_path, manifest, "run", init=str(init), conditioning="text", steps=4)
    with pytest.raises(MelFusionError, match="captions of 16 tokens, this model reads 12"):
        train(more, resume=True, progress=False)


def test_crops_longer_than_the_clips_or_off_the_frame_grid_are_refused_before_any_work(tmp_path, manifest):
    from melfusion.training.trainer import train

    with pytest.raises(MelFusionError, match="crop_frames 128 is longer than the clips \\(112 mel frames"):
        train(_config(tmp_path, manifest, "long", crop_frames=128), progress=False)
    with pytest.raises(MelFusionError, match="multiple of 16"):
        train(_config(tmp_path, manifest, "odd", crop_frames=40), progress=False)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "long").exists()


def test_init_parts_take_a_part_from_another_saved_model(tmp_path, manifest, pretrained):
    from safetensors.torch import load_file

    from melfusion.training.trainer import load_init

    _, model = pretrained
    cfg = _config(tmp_path, manifest, "parts", init="tiny", init_parts={"audio_vae": str(model)})
    pipe = load_init(cfg)
    saved = load_file(str(model / "audio_vae" / "diffusion_pytorch_model.safetensors"))
    now = pipe.audio_vae.vae.state_dict()
    assert all(torch.equal(now[k], v) for k, v in saved.items())
    with pytest.raises(MelFusionError, match="init_parts can take"):
        _config(tmp_path, manifest, "parts2", init_parts={"vocoder": str(model)})
    with pytest.raises(MelFusionError, match="not a saved model directory"):
        _config(tmp_path, manifest, "parts3", init_parts={"t2i": str(tmp_path)})


def test_high_noise_weight_draws_noisy_timesteps_more_often():
    g = torch.Generator().manual_seed(0)
    uniform = sample_timesteps(200_000, 1000, 0.0, g).double()
    tilted = sample_timesteps(200_000, 1000, 1.0, g).double()
    assert 0 <= int(tilted.min()) and int(tilted.max()) <= 999
    assert abs(float(uniform.mean()) / 1000 - 0.5) < 0.005
    # density 1 + t/T: mean 5/9 of the schedule, the top tenth drawn about 1.95 / 1.05 as often as the bottom
    assert abs(float(tilted.mean()) / 1000 - 5 / 9) < 0.005
    top, bottom = float((tilted >= 900).double().mean()), float((tilted < 100).double().mean())
    assert 1.75 < top / bottom < 1.95


def test_synapse_lr_and_alpha_lr_get_their_own_parameter_groups(tmp_path, manifest):
    from melfusion.training.stages import make_stage, stage_data
    from melfusion.training.trainer import load_entries, load_init, param_groups

    cfg = _config(tmp_path, manifest, "groups", synapse_lr=5e-3, alpha_lr=1e-2)
    pipe = load_init(cfg)
    tr, va = load_entries(cfg)
    stage = make_stage(cfg, pipe, stage_data(cfg, pipe, tr, va, Path(cfg.cache_dir), progress=False))
    groups = param_groups(cfg, stage, stage.trainable())
    n_layers = len(pipe.music.synapse.layers)
    assert [g.get("lr") for g in groups] == [None, 1e-2, 5e-3]
    assert len(groups[1]["params"]) == n_layers and len(groups[2]["params"]) == 2 * n_layers
    assert sum(len(g["params"]) for g in groups) == len(stage.trainable())


def test_a_checkpoint_exports_the_model_the_finished_run_would_save(tmp_path, manifest):
    from safetensors.torch import load_file

    from melfusion.training.trainer import export_checkpoint, train

    cfg = _config(tmp_path, manifest, "exp", conditioning="text", steps=4, checkpoint_every=4)
    final = train(cfg, progress=False)
    out, step = export_checkpoint(cfg, tmp_path / "exported", progress=False)
    assert step == 4
    a = load_file(str(final / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(MelFusionError, match="holds no checkpoint"):
        export_checkpoint(_config(tmp_path, manifest, "none"), tmp_path / "x", progress=False)


def test_key_conditioning_trains_the_tonic_from_the_records_and_the_model_composes_in_it(tmp_path, manifest):
    import numpy as np

    from melfusion.music.keys import NO_KEY, has_key
    from melfusion.pipeline import MelFusionPipeline
    from melfusion.training.stages import make_stage, stage_data
    from melfusion.training.trainer import load_entries, load_init, param_groups, train

    keyed = _keyed_manifest(tmp_path, manifest, ("Eb minor", "A major", "C major"))
    cfg = _config(tmp_path, keyed, "keyed", conditioning="text", key_conditioning=True, key_lr=5e-2, drop_key=0.25)
    pipe = load_init(cfg)
    assert has_key(pipe.music.unet)
    tr, va = load_entries(cfg)
    stage = make_stage(cfg, pipe, stage_data(cfg, pipe, tr, va, Path(cfg.cache_dir), progress=False))
    assert stage.data["train_key"].tolist() == [(3, 9, 0)[i % 3] for i in range(len(tr))]
    groups = param_groups(cfg, stage, stage.trainable())
    assert groups[-1]["lr"] == 5e-2 and len(groups[-1]["params"]) == 1
    model = train(cfg, progress=False)
    saved = MelFusionPipeline.from_pretrained(model)
    lean = MelFusionPipeline.from_pretrained(model, lean=True)
    emb = saved.music.unet.class_embedding.weight.detach()
    # The trained tonics moved off zero; the tonics no record has (and "none", dropped to) differ from them.
    assert float(emb[[3, 9, 0]].abs().max()) > 1e-3 and float(emb[1].abs().max()) < float(emb[3].abs().max())
    assert float(emb[NO_KEY].abs().max()) > 0

    def compose(p, key):
        return p(image=None, prompt="a piece for strings", duration_s=1.0, num_inference_steps=3, key=key,
                 generator=torch.Generator().manual_seed(0), progress=False).audio
    a, b = compose(saved, "Eb"), compose(saved, "A")
    assert np.abs(a - b).max() > 1e-4
    assert np.abs(compose(lean, "Eb") - a).max() < 1e-4


def test_diagnostic_j_trains_on_key_labels_that_carry_the_mode(tmp_path, manifest):
    from melfusion.music.keys import MINOR, takes_mode
    from melfusion.training.config import validate
    from melfusion.training.stages import make_stage, stage_data
    from melfusion.training.trainer import load_entries, load_init

    with pytest.raises(MelFusionError, match="key_mode needs key_conditioning"):
        validate(_config(tmp_path, manifest, "nokey", conditioning="text", key_mode=True))
    keyed = _keyed_manifest(tmp_path, manifest, ("Eb minor", "A major", "C minor"))
    cfg = _config(tmp_path, keyed, "modekey", conditioning="text", key_conditioning=True, key_mode=True)
    validate(cfg)
    pipe = load_init(cfg)
    assert takes_mode(pipe.music.unet)
    tr, va = load_entries(cfg)
    stage = make_stage(cfg, pipe, stage_data(cfg, pipe, tr, va, Path(cfg.cache_dir), progress=False))
    assert stage.data["train_key"].tolist() == [(3 + MINOR, 9, 0 + MINOR)[i % 3] for i in range(len(tr))]
    # Its checkpoints are not a tonic-only run's.
    plain = _config(tmp_path, keyed, "modekey", conditioning="text", key_conditioning=True)
    assert plain.fingerprint != cfg.fingerprint


def test_a_music_stage_from_a_model_with_a_distilled_network_does_not_carry_it(tmp_path, manifest, pretrained):
    import copy

    from melfusion.music.ldm import MusicLDM
    from melfusion.pipeline import MelFusionPipeline
    from melfusion.training.trainer import load_init

    _, model = pretrained
    base = MelFusionPipeline.from_pretrained(model)
    student = copy.deepcopy(base.music)
    base.distilled = MusicLDM(student.unet, student.synapse, student.scheduler_config)
    base.distilled_config = dict(guidance_scale=3.0, image_guidance_scale=4.0, key_guidance=False)
    base.save_pretrained(tmp_path / "with-student")
    assert MelFusionPipeline.from_pretrained(tmp_path / "with-student").has_distilled
    cfg = _config(tmp_path, manifest, "from-student", init=str(tmp_path / "with-student"), conditioning="text",
                  crop_frames=32)
    pipe = load_init(cfg)
    assert not pipe.has_distilled  # the student stood for the init's network, not the one trained from it


def test_keep_synapse_continues_a_fine_tune_and_a_global_path_starts_at_zero(tmp_path, manifest, pretrained):
    from melfusion.pipeline import MelFusionPipeline
    from melfusion.training.trainer import load_init, train

    tmp, model = pretrained
    tuned = train(_config(tmp_path, manifest, "tuned", init=str(model), conditioning="synapse", crop_frames=32,
                          synapse_lr=1e-2, alpha_lr=1e-2), progress=False)
    base = MelFusionPipeline.from_pretrained(tuned)
    cfg = _config(tmp_path, manifest, "global", init=str(tuned), conditioning="synapse", crop_frames=32,
                  keep_synapse=True, synapse_global=True, synapse_lr=1e-2)
    pipe = load_init(cfg)
    syn, old = pipe.music.synapse, base.music.synapse
    assert syn.config.global_dim == pipe.music.unet.time_embedding.linear_2.out_features
    assert float(syn.global_proj.weight.detach().abs().max()) == 0.0
    kept = {k: v for k, v in syn.state_dict().items() if not k.startswith("global_proj.")}
    assert kept.keys() == old.state_dict().keys()
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in kept.items())
    assert any(float(layer.to_v_image.weight.detach().abs().max()) > 0 for layer in syn.layers)  # not rebuilt
    text, mask = base.text_encoder.encode(["strings", "drums"])
    g, n = torch.Generator().manual_seed(0), text.shape[1]
    kv = [(torch.randn(2, n, d, generator=g), torch.randn(2, n, d, generator=g)) for d in syn.config.image_dims]
    x, t = torch.randn(2, 8, 32, 16, generator=g), torch.tensor([900, 100])
    outs = []
    for music in (base.music, pipe.music):
        with torch.no_grad(), music.synapse.condition(kv):
            outs.append(music.unet(x, t, encoder_hidden_states=text, encoder_attention_mask=mask).sample)
    assert torch.equal(outs[0], outs[1])  # the stage's first step is the fine-tune's
    trained = MelFusionPipeline.from_pretrained(train(cfg, progress=False))
    assert float(trained.music.synapse.global_proj.weight.detach().abs().max()) > 0  # the global path learned
    out = trained(image=str(manifest.parent / "i0.png"), prompt="strings", duration_s=1.0, num_inference_steps=2,
                  progress=False)
    assert out.audio.shape == (16000,)
    with pytest.raises(MelFusionError, match="keep_synapse"):
        load_init(_config(tmp_path, manifest, "bad", init=str(tuned), conditioning="text", keep_synapse=True))
