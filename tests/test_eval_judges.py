"""The SynthMeL judges: shapes, key-invariant pitch-class front end, save/load, and metrics that react."""
import math

import numpy as np
import pytest
import torch

from eval_fixtures import INSTRUMENTS, make_judges, make_manifest, tone
from melfusion.errors import MelFusionError
from melfusion.metrics import load_embedder
from melfusion.metrics.embedders import synthmel as sm
from melfusion.metrics.evaluate import evaluate_features, load_reference, markdown_table


@pytest.fixture(scope="module")
def judges_dir(tmp_path_factory):
    return make_judges(tmp_path_factory.mktemp("judges"))


@pytest.fixture(scope="module")
def judges(judges_dir):
    return sm.load_judges(judges_dir)


def test_chroma_bank_puts_a_440_hz_tone_in_pitch_class_a():
    feats = sm.features_of([tone(440.0, 1.0)])[0]
    assert feats.shape == (101, sm.FEATURES)
    assert int(feats[:, sm.N_MELS:].mean(0).argmax()) == 9  # C=0 ... A=9
    # The chroma part is a share of energy: nearly the same for a copy 20 dB quieter.
    quiet = sm.features_of([0.1 * tone(440.0, 1.0)])[0]
    top = feats[:, sm.N_MELS:].mean(0).topk(3).indices
    assert torch.allclose(quiet[:, sm.N_MELS:].mean(0)[top], feats[:, sm.N_MELS:].mean(0)[top], atol=0.05)


def test_audio_judge_shapes_and_one_window_per_second(judges):
    audio = judges[0]
    waves = [tone(300.0, 3.0), tone(500.0, 2.0), tone(700.0, 0.3)]
    out = audio.outputs(waves)
    assert out["embed"].shape == (3, 128) and out["genre"].shape == (3, 15)
    assert out["mode"].shape == (3, 2) and out["energy"].shape == (3, 2)
    assert out["instruments"].shape == (3, len(INSTRUMENTS)) and out["drums"].shape == (3, 1)
    assert audio.multilabel(out).shape == (3, 2 + 2 + 1 + len(INSTRUMENTS) - 2)
    frames = audio.embed_frames(waves)
    assert [f.shape for f in frames] == [(3, 128), (2, 128), (1, 128)]
    # Batched and one-at-a-time give the same embedding (no padding inside a batch).
    np.testing.assert_allclose(audio.embed([waves[0]]), out["embed"][:1], atol=1e-5)
    assert set(audio.predict(out)) == {"genre", "mode", "energy", "drums", "instruments"}


def test_judges_round_trip_through_safetensors(judges, tmp_path):
    audio, at, it = judges
    waves = [tone(330.0, 1.5), tone(660.0, 1.5)]
    images = [np.full((40, 40, 3), 200, np.uint8), np.zeros((40, 40, 3), np.uint8)]
    texts = ["a jazz tune with piano", "a metal track with distorted guitar"]
    for j in judges:
        j.save_pretrained(tmp_path / j.config["kind"])
    audio2, at2, it2 = sm.load_judges(tmp_path)
    np.testing.assert_array_equal(audio.embed(waves), audio2.embed(waves))
    np.testing.assert_array_equal(audio.label_logits(waves), audio2.label_logits(waves))
    a, t = at2.embed_audio(waves), at2.embed_text(texts)
    np.testing.assert_array_equal(at.embed_audio(waves), a)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(it.embed_image(images), it2.embed_image(images))
    assert it2.embed_text(texts).shape == (2, 128) and at2.logit_scale == pytest.approx(at.logit_scale)


def test_registry_loads_the_synthmel_kind_and_refuses_other_dirs(judges_dir, tmp_path):
    judge = load_embedder(f"synthmel:{judges_dir}")
    assert isinstance(judge, sm.AudioJudge) and judge.dim == 128
    with pytest.raises(MelFusionError, match="not a SynthMeL judge"):
        load_embedder(f"synthmel:{tmp_path}")
    with pytest.raises(MelFusionError, match="expected 'audio'"):
        sm.AudioJudge.from_pretrained(judges_dir / "image_text")


def test_shipped_judges_fit_the_size_budget():
    files = [p for p in sm.JUDGES_DIR.rglob("*") if p.is_file()]
    if not files:
        pytest.skip("judges not trained in this checkout")
    assert sum(p.stat().st_size for p in files) <= 10 * 2 ** 20
    assert {p.parent.name for p in files if p.name == "model.safetensors"} == {"audio", "audio_text", "image_text"}


def test_identical_sets_score_zero_and_a_shifted_set_scores_worse(judges, tmp_path):
    entries = load_reference(make_manifest(tmp_path, n=6, seconds=2.0), "test")
    ref = sm.features_of([tone(200.0 + 50 * i, 2.0) for i in range(6)])
    noisy = sm.features_of([tone(200.0 + 50 * i, 2.0, noise=0.3, seed=i) for i in range(6)])
    images = np.random.default_rng(0).random((6, 64, 64, 3)).astype(np.float32)
    same = evaluate_features(entries, ref, ref, judges, images=images)
    other = evaluate_features(entries, ref, noisy, judges, images=images)
    assert abs(same["fd"]) < 1e-6 and abs(same["fad"]) < 1e-6 and abs(same["kl"]) < 1e-4  # 1e-6 offset
    assert other["fd"] > 1e-3 and other["fad"] > 1e-3 and other["kl"] > same["kl"]
    assert same["imsm_chance"] == pytest.approx(1 / 6)
    assert same["imsm_ceiling"] == pytest.approx(math.e / (math.e + 5))
    assert 0 < same["imsm"] <= same["imsm_ceiling"] + 1e-9
    table = markdown_table({"same": same, "noisy": other})
    assert table.splitlines()[0].startswith("| Method | FD ↓ | KL ↓ | FAD ↓ | IMSM ↑")
    assert "| same | 0.00 | 0.00 | 0.00 |" in table and "IMSM×n" in table


def test_fewer_than_two_clips_is_refused(judges, tmp_path):
    entries = load_reference(make_manifest(tmp_path, n=1), "test")
    f = sm.features_of([tone(300.0)])
    with pytest.raises(MelFusionError, match="at least two clips"):
        evaluate_features(entries, f, f, judges)
