"""Training: every stage runs, resumes exactly after a kill, runs on 2 processes, refuses bad configs."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from melfusion.errors import MelFusionError
from melfusion.training.config import load_config
from training_fixtures import make_manifest, write_config

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_manifest(tmp_path_factory.mktemp("data"))


def _config(tmp_path, manifest, name="run", **over):
    values = dict(stage="music", manifest=str(manifest), out_dir=str(tmp_path / name), init="tiny", steps=6,
                  batch_size=2, checkpoint_every=3, log_every=1, val_every=3, clip_seconds=1.0, warmup_steps=2,
                  lr=1e-3, cache_dir=str(tmp_path / "cache"))
    values.update(over)
    return write_config(tmp_path / f"{name}.toml", **values)


def _train(args, env_extra=None, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "melfusion", "train", "--quiet", *args], env=env,
                          capture_output=True, text=True, **kw)


def _start_train(config, stderr):
    """`melfusion train` on `config` in the background, to be signalled mid-run."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "melfusion", "train", "--quiet", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True)


@pytest.mark.parametrize("stage", ["audio_vae", "image_vae", "t2i", "music"])
def test_each_stage_trains_logs_and_saves_a_loadable_model(tmp_path, manifest, stage):
    from melfusion.pipeline import MelFusionPipeline
    from melfusion.training.trainer import train

    cfg = load_config(_config(tmp_path, manifest, stage=stage))
    final = train(cfg, progress=False)
    rows = (Path(cfg.out_dir) / "log.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"step", "loss", "lr", "val_loss", "steps_per_s"} <= set(header)
    assert len(rows) == 1 + 6
    if stage == "music":
        assert {"alpha_0", "alpha_3"} <= set(header)
    assert list((Path(cfg.out_dir) / "tensorboard").glob("events.*"))
    pipe = MelFusionPipeline.from_pretrained(final)
    out = pipe(image=str(manifest.parent / "i0.png"), prompt="strings", duration_s=1.0, num_inference_steps=2,
               progress=False)
    assert out.audio.shape == (16000,)


def test_music_training_lowers_the_validation_loss(tmp_path, manifest):
    from melfusion.training.trainer import train

    cfg = load_config(_config(tmp_path, manifest, steps=30, val_every=10, log_every=10, lr=2e-3, ema_decay=0.0))
    train(cfg, progress=False)
    rows = [r.split(",") for r in (Path(cfg.out_dir) / "log.csv").read_text().splitlines()]
    col = rows[0].index("val_loss")
    vals = [float(r[col]) for r in rows[1:] if r[col]]
    assert len(vals) == 3 and vals[-1] < vals[0]


def test_sigkill_then_resume_ends_at_the_same_weights(tmp_path, manifest):
    common = dict(steps=12, checkpoint_every=2, log_every=2, val_every=6)
    straight = _config(tmp_path, manifest, "straight", **common)
    assert _train(["--config", str(straight)], timeout=600).returncode == 0
    killed = _config(tmp_path, manifest, "killed", **common)
    proc = _start_train(killed, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpts.is_dir() and any(p.name.startswith("step-0000004") for p in ckpts.iterdir())):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "model").exists()  # it really died mid-way
    resumed = _train(["--config", str(killed), "--resume"], timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    for part in ("unet/diffusion_pytorch_model.safetensors", "synapse/synapse.safetensors"):
        a = load_file(str(tmp_path / "straight" / "model" / part))
        b = load_file(str(tmp_path / "killed" / "model" / part))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [int(line.split(",")[0]) for line in (tmp_path / "killed" / "log.csv").read_text().splitlines()[1:]]
    assert steps == [2, 4, 6, 8, 10, 12]  # no step logged twice after the resume


def test_two_processes_see_different_data_and_end_identical(tmp_path, manifest):
    cfg = _config(tmp_path, manifest, "ddp", steps=4, batch_size=2, trace_data=True, checkpoint_every=4)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "--main_process_port", "29517", "-m", "melfusion", "train", "--quiet", "--config", str(cfg)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    traces = [json.loads((tmp_path / "ddp" / f"trace-rank{r}.json").read_text()) for r in (0, 1)]
    assert [t["world"] for t in traces] == [2, 2]
    assert len(traces[0]["ids"]) == len(traces[1]["ids"]) == 8
    a, b = traces[0]["ids"], traces[1]["ids"]
    for step in range(4):  # in every step the two processes train on different records
        assert set(a[2 * step:2 * step + 2]).isdisjoint(b[2 * step:2 * step + 2])
    # and in one epoch (2 steps of 2 x 2 records) they cover the 8 training records once
    assert sorted(a[:4] + b[:4]) == sorted(f"r{i}" for i in range(8))
    assert traces[0]["weights"] == traces[1]["weights"]


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path, manifest):
    from melfusion.training.trainer import train

    train(load_config(_config(tmp_path, manifest, "a", steps=3)), progress=False)
    other = load_config(_config(tmp_path, manifest, "a", steps=3, lr=5e-4))
    with pytest.raises(MelFusionError, match="another config"):
        train(other, resume=True, progress=False)
    with pytest.raises(MelFusionError, match="already holds checkpoints"):
        train(load_config(_config(tmp_path, manifest, "a", steps=3)), progress=False)


def test_bad_configs_fail_before_training(tmp_path, manifest):
    bad = tmp_path / "bad.toml"
    bad.write_text('stage = "music"\nmanifest = "m.jsonl"\nout_dir = "o"\nlearning_rat = 1\n')
    with pytest.raises(MelFusionError, match="unknown key learning_rat"):
        load_config(bad)
    with pytest.raises(MelFusionError, match="manifest not found"):
        load_config(_config(tmp_path, tmp_path / "nope.jsonl"))
    with pytest.raises(MelFusionError, match="stage must be one of"):
        load_config(_config(tmp_path, manifest, stage="vocoder"))
    with pytest.raises(MelFusionError, match="mixed_precision must be"):
        load_config(_config(tmp_path, manifest, mixed_precision="fp8"))
    with pytest.raises(MelFusionError, match="init must be"):
        load_config(_config(tmp_path, manifest, init=str(tmp_path / "no-model")))
    from melfusion.training.trainer import train

    with pytest.raises(MelFusionError, match="too few for batch size"):
        train(load_config(_config(tmp_path, manifest, batch_size=64)), progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_command_reports_bad_config_in_one_line(tmp_path):
    proc = _train(["--config", str(tmp_path / "missing.toml")], timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "\n" not in proc.stderr.strip()


def test_alpha_lr_lets_the_synapse_alphas_move(tmp_path, manifest):
    from melfusion.training.trainer import train

    def moved(**over):
        cfg = load_config(_config(tmp_path, manifest, name="a" + str(len(over)), steps=4, lr=1e-4, **over))
        train(cfg, progress=False)
        header, *rows = (Path(cfg.out_dir) / "log.csv").read_text().splitlines()
        cols = [i for i, h in enumerate(header.split(",")) if h.startswith("alpha_")]
        assert cols
        return max(abs(float(rows[-1].split(",")[i]) - 0.5) for i in cols)

    plain, fast = moved(), moved(alpha_lr=0.05)
    assert plain < 2e-3 < 0.01 < fast
    # A checkpoint made without alpha_lr is not resumed with it.
    a = load_config(_config(tmp_path, manifest, name="d1"))
    b = load_config(_config(tmp_path, manifest, name="d1", alpha_lr=0.05))
    assert a.fingerprint != b.fingerprint


def test_a_run_resumes_after_its_tree_moves_or_its_data_becomes_a_link(tmp_path):
    # A tree with its config and data; the same tree copied elsewhere, and one whose data/ is a link
    # into a state folder: all three configs name the same run, another manifest does not.
    def tree(root, link=False):
        (root / "configs").mkdir(parents=True)
        data = root / "data"
        if link:
            state = tmp_path / "state" / root.name
            (state / "set").mkdir(parents=True)
            data.symlink_to(state)
        else:
            (data / "set").mkdir(parents=True)
        for name in ("manifest.jsonl", "other.jsonl"):
            (data / "set" / name).write_text("{}\n")
        for name, m in (("run.toml", "manifest.jsonl"), ("other.toml", "other.jsonl")):
            (root / "configs" / name).write_text(
                f'stage = "music"\nmanifest = "../data/set/{m}"\nout_dir = "../runs/a"\ninit = "tiny"\n')
        return load_config(root / "configs" / "run.toml"), load_config(root / "configs" / "other.toml")

    (a, other), (b, _), (c, _) = tree(tmp_path / "one"), tree(tmp_path / "two"), tree(tmp_path / "three", link=True)
    assert a.manifest != b.manifest and a.fingerprint == b.fingerprint == c.fingerprint
    assert other.fingerprint != a.fingerprint
    # Through the link the path is kept as written, not resolved into the state folder.
    assert c.manifest == str(tmp_path / "three" / "data" / "set" / "manifest.jsonl")
    # Checkpoints written before (absolute paths in the digest) are still recognised in place.
    assert a.fingerprints[1] != a.fingerprint and a.fingerprints[1] != b.fingerprints[1]


def test_sigterm_saves_the_finished_step_and_resume_ends_at_the_same_weights(tmp_path, manifest):
    """A polite stop (SIGTERM, as `kill` or a scheduler sends it; Ctrl-C is the same) loses no step:
    the step in flight finishes and is checkpointed though it is not a checkpoint step."""
    common = dict(steps=10, checkpoint_every=100, log_every=1, val_every=100)
    straight = _config(tmp_path, manifest, "straight", **common)
    assert _train(["--config", str(straight)], timeout=600).returncode == 0
    stopped = _config(tmp_path, manifest, "stopped", **common)
    proc = _start_train(stopped, stderr=subprocess.PIPE)
    log = tmp_path / "stopped" / "log.csv"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: interrupted") and "--resume" in lines[0], err
    saved = sorted(p.name for p in (tmp_path / "stopped" / "checkpoints").iterdir())
    assert len(saved) == 1 and 2 <= int(saved[0].split("-")[1]) < 10  # not a multiple of checkpoint_every
    assert f"step {int(saved[0].split('-')[1])} of 10" in lines[0]
    assert not (tmp_path / "stopped" / "model").exists()
    resumed = _train(["--config", str(stopped), "--resume"], timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(str(tmp_path / "straight" / "model" / "unet/diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "stopped" / "model" / "unet/diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # resuming a finished run does nothing: the exported model and the log stay as they are
    weights = tmp_path / "stopped" / "model" / "unet/diffusion_pytorch_model.safetensors"
    before = (weights.stat().st_mtime_ns, log.read_text())
    again = _train(["--config", str(stopped), "--resume"], timeout=600)
    assert again.returncode == 0 and "model saved in" in again.stderr
    assert (weights.stat().st_mtime_ns, log.read_text()) == before
