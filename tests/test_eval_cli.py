"""`melfusion generate-set` and `melfusion evaluate`: resumable, deterministic generation; clear refusals."""
import json
import re
import shutil

import numpy as np
import pytest
import soundfile as sf

from eval_fixtures import make_judges, make_manifest, tone
from melfusion.cli import main
from melfusion.metrics.cli import record_seed, shuffled_images


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    manifest = make_manifest(root / "set", n=3)
    judges = make_judges(root / "judges")
    gen = root / "gen"
    gen.mkdir()
    for i in range(3):  # "generated" clips: the references with a little noise
        sf.write(gen / f"fx-{i:03d}.wav", tone(220.0 * (1 + i / 4), 2.0, noise=0.05, seed=i), 16000)
    return manifest, judges, gen


def _generate(manifest, out, *extra):
    return main(["generate-set", "--manifest", str(manifest), "--split", "test", "--model", "tiny", "--out", str(out),
                 "--steps", "2", "--duration", "1.0", "--quiet", *extra])


def test_record_seeds_depend_on_the_id_and_the_seed_only():
    assert record_seed("a", 0) == record_seed("a", 0)
    assert len({record_seed("a", 0), record_seed("b", 0), record_seed("a", 1)}) == 3


def test_generate_set_is_resumable_and_deterministic(fixture, tmp_path, capsys):
    manifest = fixture[0]
    assert _generate(manifest, tmp_path / "a", "--limit", "1") == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["fx-000.wav", "generate-set.json"]
    first = (tmp_path / "a" / "fx-000.wav").stat().st_mtime_ns
    capsys.readouterr()
    # A rerun over the whole split makes only the missing clips and leaves the other alone.
    assert _generate(manifest, tmp_path / "a") == 0
    err = capsys.readouterr().err
    assert "2 made, 1 already there" in err
    took = re.search(r"in (\d+) s \((\d+\.\d\d) s a clip, loading included\)", err)
    assert took and float(took.group(2)) > 0 and abs(float(took.group(2)) * 2 - float(took.group(1))) <= 1
    assert (tmp_path / "a" / "fx-000.wav").stat().st_mtime_ns == first
    assert not list((tmp_path / "a").glob(".tmp-*"))
    # fx-002 made alone in another run (the others already there) is the same clip: its seed is its id's
    # (here it was made in a batch with fx-001, so the same up to float rounding).
    (tmp_path / "b").mkdir()
    for name in ("fx-000.wav", "fx-001.wav"):
        (tmp_path / "b" / name).write_bytes(b"placeholder")
    assert _generate(manifest, tmp_path / "b") == 0
    wave, rate = sf.read(tmp_path / "b" / "fx-002.wav")
    assert rate == 16000 and wave.shape == (16000,)
    assert np.abs(sf.read(tmp_path / "a" / "fx-002.wav")[0] - wave).max() < 1e-3
    assert (tmp_path / "a" / "fx-001.wav").read_bytes() != (tmp_path / "a" / "fx-002.wav").read_bytes()


def test_evaluate_writes_a_json_report_and_a_table(fixture, tmp_path, capsys):
    manifest, judges, gen = fixture
    out = tmp_path / "report.json"
    assert main(["evaluate", "--generated", str(gen), "--reference", str(manifest), "--split", "test",
                 "--judges", str(judges), "--name", "noisy", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["n"] == 3 and report["embedder"] == "synthmel"
    for key in ("fad", "fd", "kl", "kl_sigmoid", "imsm"):
        assert np.isfinite(report[key])
    assert report["fd"] > 0 and 0 < report["imsm"] <= report["imsm_ceiling"]
    assert set(report["accuracy"]) == {"genre", "mode", "energy"}
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    test = {r["id"]: r for r in records if r["split"] == "test"}
    assert set(report["predictions"]) == set(test)
    for key in ("genre", "mode", "energy"):  # the accuracies are the predictions' agreement with the labels
        agree = np.mean([p[key] == test[i][key] for i, p in report["predictions"].items()])
        assert abs(agree - report["accuracy"][key]) < 1e-9
    assert {p["mode"] for p in report["predictions"].values()} <= {"major", "minor"}
    table = capsys.readouterr().out
    assert "| noisy |" in table and (tmp_path / "report.md").read_text().startswith("| Method | FD")


def test_generate_set_refuses_to_mix_settings_in_one_folder(fixture, tmp_path, capsys):
    manifest = fixture[0]
    assert _generate(manifest, tmp_path / "a", "--limit", "1") == 0
    settings = json.loads((tmp_path / "a" / "generate-set.json").read_text())
    assert settings["steps"] == 2 and settings["model"] == "tiny" and settings["seed"] == 0
    capsys.readouterr()
    # Other steps, seed or image guidance would make the missing clips another way: refused, nothing made.
    for steps, more in (("3", ()), ("2", ("--seed", "1")), ("2", ("--image-guidance", "5"))):
        assert main(["generate-set", "--manifest", str(manifest), "--split", "test", "--model", "tiny",
                     "--out", str(tmp_path / "a"), "--steps", steps, "--duration", "1.0", "--quiet", *more]) == 2
        err = capsys.readouterr().err
        assert "use another --out folder" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "a").glob("*.wav")) == ["fx-000.wav"]
    # The same settings with another --limit, --shard or --batch-size resume.
    assert _generate(manifest, tmp_path / "a", "--shard", "1/2", "--batch-size", "2") == 0
    assert sorted(p.name for p in (tmp_path / "a").glob("*.wav")) == ["fx-000.wav", "fx-001.wav"]
    # A folder of clips from before the settings were recorded: a note, and no settings claimed for them.
    (tmp_path / "old").mkdir()
    shutil.copy(tmp_path / "a" / "fx-000.wav", tmp_path / "old")
    capsys.readouterr()
    assert _generate(manifest, tmp_path / "old", "--limit", "2") == 0
    assert "settings cannot be checked" in capsys.readouterr().err
    assert not (tmp_path / "old" / "generate-set.json").exists()


def test_generate_set_notices_a_model_retrained_in_place(fixture, tmp_path, capsys):
    from melfusion import presets

    manifest = fixture[0]
    presets.build("tiny", seed=0).save_pretrained(tmp_path / "model")
    run = ["generate-set", "--manifest", str(manifest), "--split", "test", "--model", str(tmp_path / "model"),
           "--out", str(tmp_path / "a"), "--steps", "2", "--duration", "1.0", "--quiet"]
    assert main(run + ["--limit", "1"]) == 0
    settings = json.loads((tmp_path / "a" / "generate-set.json").read_text())
    assert len(settings["weights"]) == 20
    # Other weights at the same path (a retrained model saved over the old one): refused, nothing made.
    shutil.rmtree(tmp_path / "model")
    presets.build("tiny", seed=1).save_pretrained(tmp_path / "model")
    capsys.readouterr()
    assert main(run + ["--limit", "2"]) == 2
    err = capsys.readouterr().err
    assert "weights=" in err and "use another --out folder" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "a").glob("*.wav")) == ["fx-000.wav"]
    # A folder whose settings predate the digest is checked on the rest, and resumes.
    del settings["weights"]
    (tmp_path / "a" / "generate-set.json").write_text(json.dumps(settings))
    assert main(run + ["--limit", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "a").glob("*.wav")) == ["fx-000.wav", "fx-001.wav"]


def _evaluate(fixture, gen, tmp_path, *extra):
    manifest, judges, _ = fixture
    return main(["evaluate", "--generated", str(gen), "--reference", str(manifest), "--judges", str(judges),
                 "--out", str(tmp_path / "r.json"), *extra])


def _copy(gen, dest, names):
    dest.mkdir()
    for n in names:
        shutil.copy(gen / n, dest / n)
    return dest


def test_evaluate_refuses_clips_without_a_reference(fixture, tmp_path, capsys):
    gen = _copy(fixture[2], tmp_path / "g", ["fx-000.wav", "fx-001.wav", "fx-002.wav"])
    shutil.copy(gen / "fx-000.wav", gen / "other-9.wav")
    assert _evaluate(fixture, gen, tmp_path) == 2
    err = capsys.readouterr().err
    assert "no reference record" in err and "other-9.wav" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.json").exists()


def test_evaluate_refuses_missing_clips_unless_asked_for_a_subset(fixture, tmp_path, capsys):
    gen = _copy(fixture[2], tmp_path / "g", ["fx-000.wav", "fx-002.wav"])
    assert _evaluate(fixture, gen, tmp_path) == 2
    assert "no generated clip, e.g. fx-001.wav" in capsys.readouterr().err
    assert _evaluate(fixture, gen, tmp_path, "--subset") == 0
    assert json.loads((tmp_path / "r.json").read_text())["n"] == 2


def test_evaluate_refuses_a_single_clip(fixture, tmp_path, capsys):
    gen = _copy(fixture[2], tmp_path / "g", ["fx-001.wav"])
    assert _evaluate(fixture, gen, tmp_path, "--subset") == 2
    assert "at least two clips" in capsys.readouterr().err


def test_evaluate_refuses_an_empty_or_missing_folder(fixture, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _evaluate(fixture, tmp_path / "empty", tmp_path) == 2
    assert "no .wav files" in capsys.readouterr().err
    assert _evaluate(fixture, tmp_path / "nowhere", tmp_path) == 2
    assert "not found" in capsys.readouterr().err


def test_evaluate_resamples_other_rates_and_says_so(fixture, tmp_path, capsys):
    gen = _copy(fixture[2], tmp_path / "g", ["fx-000.wav", "fx-001.wav"])
    sf.write(gen / "fx-002.wav", tone(275.0, 2.0, rate=22050), 22050)
    assert _evaluate(fixture, gen, tmp_path) == 0
    assert "1 generated clip(s) at 22050 Hz resampled to 16000 Hz" in capsys.readouterr().err
    assert json.loads((tmp_path / "r.json").read_text())["resampled_clips"] == 1


def test_shuffled_images_give_every_record_another_records_image():
    ids = [f"r{i}" for i in range(50)]
    pairing = shuffled_images(ids, 3)
    assert sorted(pairing) == sorted(ids) == sorted(pairing.values())  # a permutation
    assert all(pairing[i] != i for i in ids)  # and no record keeps its own image
    assert pairing == shuffled_images(ids, 3) and pairing != shuffled_images(ids, 4)


def test_generate_set_with_shuffled_images_changes_the_clips(fixture, tmp_path):
    manifest = fixture[0]
    assert _generate(manifest, tmp_path / "plain", "--limit", "1") == 0
    assert _generate(manifest, tmp_path / "shuffled", "--limit", "1", "--shuffle-images", "0") == 0
    a = (tmp_path / "plain" / "fx-000.wav").read_bytes()
    assert a != (tmp_path / "shuffled" / "fx-000.wav").read_bytes()


def test_generate_set_clips_do_not_depend_on_the_batch_size(fixture, tmp_path):
    manifest = fixture[0]
    assert _generate(manifest, tmp_path / "one", "--batch-size", "1") == 0
    assert _generate(manifest, tmp_path / "three", "--batch-size", "3") == 0
    names = sorted(p.name for p in (tmp_path / "one").glob("*.wav"))
    assert names == sorted(p.name for p in (tmp_path / "three").glob("*.wav")) and len(names) == 3
    waves = {}
    for name in names:
        a, _ = sf.read(tmp_path / "one" / name)
        b, _ = sf.read(tmp_path / "three" / name)
        assert a.shape == b.shape == (16000,)
        assert np.abs(a - b).max() < 1e-3, name  # float rounding of batched kernels only
        waves[name] = a
    # ... while the clips themselves differ from record to record.
    assert np.abs(waves[names[0]] - waves[names[1]]).max() > 0.05


def test_generate_set_refuses_a_bad_batch_size(fixture, tmp_path, capsys):
    assert _generate(fixture[0], tmp_path / "x", "--batch-size", "0") == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_generate_set_shards_split_the_records_between_processes(fixture, tmp_path, capsys):
    manifest = fixture[0]
    assert _generate(manifest, tmp_path / "all") == 0
    assert _generate(manifest, tmp_path / "parts", "--shard", "1/2") == 0
    assert sorted(p.name for p in (tmp_path / "parts").glob("*.wav")) == ["fx-001.wav"]
    assert _generate(manifest, tmp_path / "parts", "--shard", "0/2") == 0
    assert sorted(p.name for p in (tmp_path / "parts").glob("*.wav")) == ["fx-000.wav", "fx-001.wav", "fx-002.wav"]
    for name in ("fx-000.wav", "fx-001.wav", "fx-002.wav"):
        assert (tmp_path / "all" / name).read_bytes() == (tmp_path / "parts" / name).read_bytes()
    capsys.readouterr()
    for bad in ("2/2", "x", "1/0"):
        assert _generate(manifest, tmp_path / "bad", "--shard", bad) == 2
    assert "--shard" in capsys.readouterr().err and not (tmp_path / "bad").exists()
