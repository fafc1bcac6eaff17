"""Issue 12 D: the frozen mode-and-pace reader of latents, its loss, and its place in training."""
import csv

import pytest
import torch

from melfusion.errors import MelFusionError
from melfusion.music.reader import (IGNORE, LABELS, LatentReader, ReaderConfig, ReaderLoss, accuracy, label_tensor,
                                    train_reader)
from training_fixtures import make_manifest, music_config


def _toy(n, seed, frames=24, bins=8):
    """Latents whose mode is which of two bin pairs (a 'third' above a 'tonic' anywhere in the
    lower bins) carries a pulse, at a random time offset; energy is the pulse rate."""
    g = torch.Generator().manual_seed(seed)
    z = 0.3 * torch.randn(n, 2, frames, bins, generator=g)
    labels = torch.randint(0, 2, (n, 2), generator=g)
    for i in range(n):
        tonic = int(torch.randint(0, bins - 4, (1,), generator=g))
        third = tonic + (4 if labels[i, 0] == 0 else 3)
        every = 2 if labels[i, 1] == 1 else 6
        start = int(torch.randint(0, every, (1,), generator=g))
        z[i, 0, start::every, tonic] += 2.0
        z[i, 0, start::every, third] += 2.0
    return z, labels


@pytest.fixture(scope="module")
def toy_reader():
    z, y = _toy(256, 0)
    return train_reader(z, y, ReaderConfig(in_channels=2, bins=8, width=16), frames=16, steps=200, batch=32,
                        lr=1e-2, progress=False)


def test_the_reader_learns_mode_and_pace_whatever_the_key_and_a_shuffled_label_stays_at_chance(toy_reader):
    z, y = _toy(200, 1)
    acc = accuracy(toy_reader, z, y, frames=16)
    assert acc["mode"] > 0.9 and acc["energy"] > 0.9
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    chance = accuracy(toy_reader, z, shuffled, frames=16)
    assert abs(chance["mode"] - 0.5) < 0.12 and abs(chance["energy"] - 0.5) < 0.12
    whole = accuracy(toy_reader, z, y)  # any length: the reader means over time
    assert whole["mode"] > 0.9


def test_a_saved_reader_loads_frozen_and_reads_alike(toy_reader, tmp_path):
    toy_reader.save(tmp_path / "r")
    back = LatentReader.load(tmp_path / "r")
    z, _ = _toy(8, 2)
    assert all(not p.requires_grad for p in back.parameters())
    for h in LABELS:
        assert torch.equal(back(z)[h], toy_reader(z)[h])
    (tmp_path / "r" / "reader.safetensors").unlink()
    with pytest.raises(MelFusionError, match="not a saved reader"):
        LatentReader.load(tmp_path / "r")
    with pytest.raises(MelFusionError, match="reads latents of 2 channels"):
        back(torch.zeros(1, 3, 16, 8))


def test_the_loss_weighs_only_the_samples_it_is_told_and_moves_the_latent_not_the_reader(toy_reader):
    z, y = _toy(6, 3)
    clean = z.clone().requires_grad_(True)
    loss = ReaderLoss(toy_reader, ["mode"])
    w = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5, 0.0])
    value = loss(clean, y, w)
    ce = torch.nn.functional.cross_entropy(toy_reader(z)["mode"], y[:, 0], reduction="none")
    assert float(value.detach()) == pytest.approx(float((ce * w).sum() / w.sum()), rel=1e-5)
    value.backward()
    grad = clean.grad.flatten(1).abs().sum(1)
    assert torch.all(grad[w == 0] == 0) and torch.all(grad[w > 0] > 0)
    assert all(p.grad is None for p in toy_reader.parameters())
    assert float(loss(z, y, torch.zeros(6))) == 0.0
    # The wrong label costs more than the right one.
    assert float(loss(z, 1 - y, torch.ones(6))) > float(loss(z, y, torch.ones(6)))
    with pytest.raises(MelFusionError, match="no 'genre' head"):
        ReaderLoss(toy_reader, ["genre"])


def test_labels_come_from_the_records_and_a_missing_one_is_one_clear_line():
    rows = [{"id": "a", "mode": "minor", "energy": "calm"}, {"id": "b", "mode": "major", "energy": "driving"}]
    assert label_tensor(rows).tolist() == [[1, 0], [0, 1]]
    assert label_tensor([{"id": "c", "mode": "minor"}], ["mode"]).tolist() == [[1, IGNORE]]
    with pytest.raises(MelFusionError, match="record c has no energy label"):
        label_tensor([{"id": "c", "mode": "minor"}])


@pytest.fixture()
def manifest(tmp_path):
    return make_manifest(tmp_path / "data", n=12)


def _config(tmp_path, manifest, name, **over):
    values = dict(steps=3, checkpoint_every=3, val_every=3, conditioning="text", crop_frames=32)
    values.update(over)
    return music_config(tmp_path, manifest, name, **values)


def test_a_run_with_the_reader_loss_logs_it_and_adds_it_to_the_same_batches(tmp_path, manifest):
    from melfusion import presets
    from melfusion.training.trainer import train

    pipe = presets.build("tiny")
    channels, bins = pipe.audio_vae.encode(torch.zeros(1, 64, pipe.mel.n_mels)).shape[1::2]
    torch.manual_seed(0)
    LatentReader(ReaderConfig(in_channels=channels, bins=bins, width=8, heads=["mode"])).save(tmp_path / "reader")
    plain = _config(tmp_path, manifest, "plain")
    # No reader_heads: the reader's own (mode only), so the records' missing energy is not needed.
    read = _config(tmp_path, manifest, "read", reader=str(tmp_path / "reader"), reader_weight=2.0)
    assert plain.fingerprint == _config(tmp_path, manifest, "plain", reader_weight=0.0).fingerprint
    assert read.fingerprint != _config(tmp_path, manifest, "read", reader=str(tmp_path / "reader"),
                                       reader_weight=1.0).fingerprint
    train(plain, progress=False)
    train(read, progress=False)
    rows = {n: list(csv.DictReader(open(tmp_path / n / "log.csv"))) for n in ("plain", "read")}
    values = [float(r["reader"]) for r in rows["read"] if r.get("reader")]
    assert len(values) == 3 and all(0 < v < 5 for v in values)
    assert not any(r.get("reader") for r in rows["plain"])
    first = [float(rows[n][0]["loss"]) for n in ("plain", "read")]
    assert first[1] == pytest.approx(first[0] + 2.0 * values[0], rel=1e-3)


def test_reader_settings_that_cannot_work_are_refused_before_any_work(tmp_path, manifest):
    with pytest.raises(MelFusionError, match="reader_weight needs `reader`"):
        _config(tmp_path, manifest, "a", reader_weight=0.1)
    with pytest.raises(MelFusionError, match="reader_weight needs `reader`"):
        _config(tmp_path, manifest, "b", reader_weight=0.1, reader=str(tmp_path / "nowhere"))
    torch.manual_seed(0)
    LatentReader(ReaderConfig(width=4)).save(tmp_path / "r")
    with pytest.raises(MelFusionError, match="reader_heads must name some of"):
        _config(tmp_path, manifest, "c", reader_weight=0.1, reader=str(tmp_path / "r"), reader_heads=["genre"])
    with pytest.raises(MelFusionError, match="reader_weight must be between"):
        _config(tmp_path, manifest, "d", reader_weight=-1.0)
