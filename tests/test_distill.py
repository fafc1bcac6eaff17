"""Guidance distillation (melfusion.training.distill) and the pipeline's distilled path."""
import copy
import json

import pytest
import torch

from melfusion.errors import MelFusionError
from melfusion.music.ldm import MusicLDM
from training_fixtures import make_manifest

SCALES = dict(guidance_scale=3.0, image_guidance_scale=4.0, key_guidance=False)


def _with_student(pipe, student=None):
    """A shallow copy of `pipe` carrying `student` (default: a copy of its own network) as distilled."""
    other = copy.copy(pipe)
    other.defaults = dict(pipe.defaults, **{k: v for k, v in SCALES.items() if k != "key_guidance"})
    music = student or copy.deepcopy(pipe.music)
    other.distilled = MusicLDM(music.unet, music.synapse, music.scheduler_config)
    other.distilled_config = dict(SCALES)
    return other


class _Counter:
    def __init__(self, music):
        self.calls, self.batches = 0, []
        self._predict = music.predict
        music.predict = self

    def __call__(self, latents, *args, **kwargs):
        self.calls += 1
        self.batches.append(latents.shape[0])
        return self._predict(latents, *args, **kwargs)


def _compose(pipe, image, **kw):
    return pipe(image=image, prompt="a slow waltz for strings", duration_s=2.0, num_inference_steps=3,
                generator=torch.Generator().manual_seed(0), progress=False, **kw)


def test_distilled_pass_is_the_conditional_pass_through_the_student(tiny_pipe, example_image):
    # A student that is a copy of the teacher computes the teacher's conditional pass: the
    # distilled call then equals the unguided call (guidance 1, no image guidance) bit for bit.
    pipe = _with_student(tiny_pipe)
    distilled = _compose(pipe, example_image)
    plain = _compose(tiny_pipe, example_image, guidance_scale=1.0, image_guidance_scale=None)
    guided = _compose(tiny_pipe, example_image, guidance_scale=3.0, image_guidance_scale=4.0)
    assert torch.equal(torch.as_tensor(distilled.audio), torch.as_tensor(plain.audio))
    assert float(abs(torch.as_tensor(distilled.audio) - torch.as_tensor(guided.audio)).max()) > 1e-3


def test_the_student_runs_one_pass_a_step_only_where_its_guidance_applies(tiny_pipe, example_image):
    pipe = _with_student(tiny_pipe)
    student, teacher = _Counter(pipe.distilled), _Counter(copy.copy(tiny_pipe.music))
    pipe.music = teacher._predict.__self__
    try:
        _compose(pipe, example_image)
        assert (student.calls, teacher.calls) == (3, 0) and student.batches == [1, 1, 1]
        _compose(pipe, example_image, image_guidance_scale=6.0)  # not what it was distilled for
        assert (student.calls, teacher.calls) == (3, 3) and teacher.batches == [3, 3, 3]
        _compose(pipe, example_image, distilled=False)
        assert (student.calls, teacher.calls) == (3, 6)
        _compose(pipe, None)  # the picture absent: the teacher's guided passes
        assert (student.calls, teacher.calls) == (3, 9)
        pipe.defaults["distilled"] = False  # a model whose defaults turn it off
        _compose(pipe, example_image)
        assert (student.calls, teacher.calls) == (3, 12)
    finally:
        del pipe.distilled.predict
    with pytest.raises(MelFusionError, match="distilled for guidance 3, image guidance 4"):
        _compose(pipe, example_image, guidance_scale=5.0, distilled=True)
    with pytest.raises(MelFusionError, match="first steps only"):
        _compose(pipe, example_image, guided_steps=1, distilled=True)
    with pytest.raises(MelFusionError, match="no distilled network"):
        _compose(tiny_pipe, example_image, distilled=True)


def test_teacher_steps_run_the_teachers_passes_first_then_the_student(tiny_pipe, example_image):
    student_net = copy.deepcopy(tiny_pipe.music)
    with torch.no_grad():
        for p in student_net.unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    pipe = _with_student(tiny_pipe, student_net)
    student, teacher = _Counter(pipe.distilled), _Counter(copy.copy(tiny_pipe.music))
    pipe.music = teacher._predict.__self__
    try:
        one = _compose(pipe, example_image, teacher_steps=1)
        assert (student.calls, teacher.calls) == (2, 1) and teacher.batches == [3] and student.batches == [1, 1]
        pipe.defaults["teacher_steps"] = 2  # the model's saved choice
        _compose(pipe, example_image)
        assert (student.calls, teacher.calls) == (3, 3)
    finally:
        del pipe.distilled.predict
        del pipe.music.predict
    pipe.defaults.pop("teacher_steps")
    # Every step the teacher's: the guided teacher exactly; none: the student alone.
    full = _compose(pipe, example_image, teacher_steps=3).audio
    assert torch.equal(torch.as_tensor(full), torch.as_tensor(_compose(pipe, example_image, distilled=False).audio))
    alone = _compose(pipe, example_image, teacher_steps=0).audio
    assert float(abs(torch.as_tensor(one.audio) - torch.as_tensor(alone)).max()) > 1e-4
    assert float(abs(torch.as_tensor(one.audio) - torch.as_tensor(full)).max()) > 1e-4
    with pytest.raises(MelFusionError, match="teacher steps must be a whole number"):
        _compose(pipe, example_image, teacher_steps=-1)


def test_a_saved_student_loads_back_on_both_runtimes(tiny_pipe, example_image, tmp_path):
    from melfusion.pipeline import MelFusionPipeline

    student = copy.deepcopy(tiny_pipe.music)
    with torch.no_grad():
        for p in student.unet.parameters():
            p.add_(0.01 * torch.randn_like(p))
    pipe = _with_student(tiny_pipe, student)
    pipe.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "distilled" / "distilled.json").read_text()) == SCALES
    want = _compose(pipe, example_image).audio
    for lean in (False, True):
        again = MelFusionPipeline.from_pretrained(tmp_path / "m", lean=lean)
        assert again.has_distilled and again.distilled_config == SCALES
        got = _compose(again, example_image).audio
        assert float(abs(torch.as_tensor(got) - torch.as_tensor(want)).max()) < 1e-4
    (tmp_path / "m" / "distilled" / "distilled.json").write_text(json.dumps({"guidance_scale": 3.0}))
    with pytest.raises(MelFusionError, match="lacks image_guidance_scale"):
        MelFusionPipeline.from_pretrained(tmp_path / "m")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from melfusion import presets

    root = tmp_path_factory.mktemp("distil")
    pipe = presets.build("tiny", seed=0)
    pipe.defaults.update(duration_s=2.0, num_inference_steps=3, solver="dpm++2m", image_guidance_scale=4.0)
    pipe.save_pretrained(root / "teacher")
    manifest = make_manifest(root / "data", n=12)
    return root, str(root / "teacher"), str(manifest)


def test_collected_targets_are_the_teachers_guided_outputs(teacher):
    from melfusion.pipeline import MelFusionPipeline
    from melfusion.t2i.model import ImageTrajectory
    from melfusion.training import distill

    root, model, manifest = teacher
    out = distill.collect(model, manifest, "train", 6, str(root / "t"), per_file=4, batch=2, progress=False)
    data = distill.TeacherOutputs(out)
    assert (data.clips, data.steps) == (6, 3) and len(list(out.glob("part-*.pt"))) == 2
    assert data.x.shape[:2] == (3, 6) and data.target.shape == data.x.shape
    # The guided mixture, recomputed by hand from the three passes on clip 5 at step 1.
    pipe = MelFusionPipeline.from_pretrained(model)
    traj = ImageTrajectory(data.traj[:, [5]], data.traj_timesteps, data.traj_train_timesteps)
    t = torch.tensor([data.t[1]])
    kv = pipe.image_features_for_training(traj, t)
    text, mask, null, null_mask = pipe.encode_prompt([data.captions[5]])
    x = data.x[1, [5]]
    with torch.no_grad():
        u = pipe.music.predict(x, t, null, null_mask, kv, torch.zeros(1))
        c = pipe.music.predict(x, t, text, mask, kv, torch.zeros(1))
        full = pipe.music.predict(x, t, text, mask, kv, torch.ones(1))
    mixed = u + 3.0 * (c - u) + 4.0 * (full - c)
    assert float((mixed - data.target[1, [5]]).abs().max()) < 1e-4
    # A second collect with other settings into the same folder is refused before any work.
    with pytest.raises(MelFusionError, match="other settings"):
        distill.collect(model, manifest, "train", 6, str(out), per_file=2, progress=False)
    with pytest.raises(MelFusionError, match="fewer than"):
        distill.collect(model, manifest, "train", 50, str(root / "t2"), progress=False)


def test_training_moves_the_student_towards_the_teacher_and_resumes_exactly(teacher):
    from melfusion.pipeline import MelFusionPipeline
    from melfusion.training import distill

    root, model, manifest = teacher
    data = distill.collect(model, manifest, "train", 4, str(root / "d"), per_file=4, progress=False)
    kw = dict(batch=6, lr=1e-4, warmup=1, checkpoint_every=2, val_every=4, precision="fp32", progress=False)
    straight = distill.train(model, str(data), str(data), 8, str(root / "run-a"), **kw)
    rows = (straight / "log.csv").read_text().splitlines()[1:]
    start, end = float(rows[0].split(",")[2]), float(rows[-1].split(",")[2])
    assert end < 0.7 * start  # on its own training pairs the MSE to the guided outputs falls
    distill.train(model, str(data), str(data), 4, str(root / "run-b"), **kw)
    distill.train(model, str(data), str(data), 8, str(root / "run-b"), **kw)  # resumed to the same step
    a = torch.load(straight / "checkpoint.pt", weights_only=False)
    b = torch.load(root / "run-b" / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 8
    assert all(torch.equal(a["music"][k], b["music"][k]) for k in a["music"])
    exported = distill.export(model, str(straight), str(root / "model"))
    pipe = MelFusionPipeline.from_pretrained(exported, lean=True)
    assert pipe.has_distilled and pipe.distilled_config["image_guidance_scale"] == 4.0
    assert pipe.distilled_config["distilled_steps"] == 8
    with pytest.raises(MelFusionError, match="already carries a distilled network"):
        distill.export(str(exported), str(straight), str(root / "model2"))
    with pytest.raises(MelFusionError, match="other settings"):
        distill.train(model, str(data), None, 8, str(root / "run-b"), **dict(kw, lr=5e-5))


def test_a_synapse_rate_moves_the_synapse_further_than_the_unet_rate(teacher):
    from melfusion.training import distill

    root, model, manifest = teacher
    data = distill.collect(model, manifest, "train", 4, str(root / "s"), per_file=4, progress=False)
    kw = dict(batch=6, lr=1e-5, warmup=1, checkpoint_every=3, val_every=3, precision="fp32", progress=False)
    start = distill.Student(model, bf16=False).music.synapse.state_dict()

    def synapse_shift(run):
        state = torch.load(run / "checkpoint.pt", weights_only=False)["music"]
        return sum(float((state[f"synapse.{k}"] - v).abs().sum()) for k, v in start.items()
                   if v.is_floating_point())

    plain = distill.train(model, str(data), None, 3, str(root / "syn-a"), **kw)
    fast = distill.train(model, str(data), None, 3, str(root / "syn-b"), synapse_lr=1e-3, **kw)
    assert synapse_shift(fast) > 20 * synapse_shift(plain) > 0
    assert json.loads((fast / "run.json").read_text())["synapse_lr"] == 1e-3
    # The rate is part of the run's settings: resuming without it is refused.
    with pytest.raises(MelFusionError, match="other settings"):
        distill.train(model, str(data), None, 6, str(fast), **kw)
