"""Issue 12 D: the pitch-class loss on the predicted clean latent, and its place in training."""
import csv

import numpy as np
import pytest
import torch

from melfusion.audio.mel import MelConfig, MelSpectrogram
from melfusion.errors import MelFusionError
from melfusion.music.harmony import (HarmonyLoss, band_centres, frame_profiles, latent_frame_profiles,
                                     pitch_class_map, pooled_profile)
from training_fixtures import make_manifest, music_config

SR = 16000


def _chord(midis, seconds=1.0):
    t = np.arange(int(SR * seconds)) / SR
    wave = sum(np.sin(2 * np.pi * 440.0 * 2 ** ((m - 69) / 12) * t) for m in midis) / len(midis)
    return torch.from_numpy(wave.astype(np.float32))


def _profile(midis):
    mel = MelSpectrogram(MelConfig())(_chord(midis))
    return pooled_profile(frame_profiles(mel, pitch_class_map()))[0]


def test_the_map_folds_only_narrow_bands_onto_the_pitch_classes_they_cover():
    m = pitch_class_map(MelConfig(), f_lo=800.0)
    centres = band_centres(MelConfig())
    assert m.shape == (64, 12)
    assert torch.all(m[torch.from_numpy(centres < 800.0)] == 0)
    covered = m[torch.from_numpy(centres >= 800.0)]
    assert len(covered) > 35
    assert torch.allclose(covered.sum(dim=1), torch.ones(len(covered)), atol=1e-6)  # each band shared out whole
    assert (covered > 0).sum(dim=1).max() <= 2


def test_a_tone_lands_on_its_pitch_class():
    for midi in (84, 88, 91, 94):  # C6, E6, G6, A#6: one octave above the bands' lower limit
        p = _profile([midi])
        assert int(p.argmax()) == midi % 12, (midi, p)


def test_major_and_minor_chords_differ_in_the_third():
    major, minor = _profile([84, 88, 91]), _profile([84, 87, 91])  # C E G against C Eb G
    assert major[4] > 2 * major[3] and minor[3] > 2 * minor[4]
    assert float((major - minor).abs().sum()) > 0.3
    assert float((major - _profile([84, 88, 91])).abs().sum()) == 0.0


def test_latent_frame_profiles_sum_to_the_whole_clip_profile():
    mel = MelSpectrogram(MelConfig())(torch.stack([_chord([84, 88, 91]), _chord([81, 84, 88])]))[:, :96]
    per = latent_frame_profiles(mel, pitch_class_map(), factor=4, batch=1)
    assert per.shape == (2, 24, 12)
    whole = frame_profiles(mel, pitch_class_map()).sum(dim=1)
    assert torch.allclose(per.sum(dim=1), whole, rtol=1e-5)


def test_the_loss_is_zero_on_its_own_target_and_pulls_a_wrong_latent_towards_it(tiny_pipe):
    torch.manual_seed(0)
    vae = tiny_pipe.audio_vae
    h = HarmonyLoss(vae, tiny_pipe.mel)
    z = torch.randn(2, vae.latent_channels, 8, 16)
    with torch.no_grad():
        target = frame_profiles(vae.decode(z), h.pc_map).sum(dim=1)
    assert float(h(z, target)) < 1e-6
    wrong = torch.randn_like(z).requires_grad_(True)
    loss = h(wrong, target)
    loss.backward()
    assert float(loss.detach()) > 1e-3
    assert float(wrong.grad.abs().sum()) > 0
    assert all(p.grad is None for p in vae.parameters())  # the decoder stays frozen
    with torch.no_grad():
        step = wrong - 0.5 * wrong.grad / wrong.grad.norm()
        assert float(h(step, target)) < float(loss)


def test_predicted_clean_latent_inverts_the_noising(tiny_pipe):
    music = tiny_pipe.music
    sched = music.noise_scheduler
    torch.manual_seed(1)
    x0, noise = torch.randn(3, 8, 8, 16), torch.randn(3, 8, 8, 16)
    t = torch.tensor([10, 500, 990])
    noisy = sched.add_noise(x0, noise, t)
    v = sched.get_velocity(x0, noise, t)
    assert torch.allclose(music.predicted_clean(noisy, v, t), x0, atol=1e-4)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_manifest(tmp_path_factory.mktemp("data"))


def _config(tmp_path, manifest, name, **over):
    values = dict(steps=3, checkpoint_every=3, val_every=3, conditioning="text", crop_frames=32)
    values.update(over)
    return music_config(tmp_path, manifest, name, **values)


def test_a_run_with_the_harmony_loss_logs_it_and_trains_otherwise_alike(tmp_path, manifest):
    from melfusion.training.trainer import train

    plain = _config(tmp_path, manifest, "plain")
    with_h = _config(tmp_path, manifest, "harmony", harmony_weight=2.0, harmony_batch=1)
    assert plain.fingerprint == _config(tmp_path, manifest, "plain", harmony_batch=8).fingerprint
    assert with_h.fingerprint != _config(tmp_path, manifest, "harmony").fingerprint
    train(plain, progress=False)
    train(with_h, progress=False)
    rows = {n: list(csv.DictReader(open(tmp_path / n / "log.csv"))) for n in ("plain", "harmony")}
    values = [float(r["harmony"]) for r in rows["harmony"] if r.get("harmony")]
    assert len(values) == 3 and all(0 < v <= 2 for v in values)
    assert not any(r.get("harmony") for r in rows["plain"])
    # The harmony term is added: same seed, same batches, a larger training loss.
    first = [float(rows[n][0]["loss"]) for n in ("plain", "harmony")]
    assert first[1] == pytest.approx(first[0] + 2.0 * values[0], rel=1e-3)


def test_a_harmony_weight_outside_the_music_stage_or_out_of_range_is_refused(tmp_path, manifest):
    with pytest.raises(MelFusionError, match="harmony_weight is for the music stage"):
        _config(tmp_path, manifest, "v", stage="audio_vae", harmony_weight=1.0, conditioning="synapse")
    with pytest.raises(MelFusionError, match="harmony_weight must be between"):
        _config(tmp_path, manifest, "n", harmony_weight=-1.0)
    with pytest.raises(MelFusionError, match="harmony_batch must be at least 1"):
        _config(tmp_path, manifest, "b", harmony_weight=1.0, harmony_batch=0)
