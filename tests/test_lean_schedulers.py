"""melfusion.lean.schedulers against diffusers: the same timesteps, the same sampling loops."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from melfusion.lean import Unsupported
from melfusion.lean import schedulers as lean

diffusers = pytest.importorskip("diffusers")

ASSETS = Path(__file__).parents[1] / "melfusion" / "assets" / "default"
MUSIC = json.loads((ASSETS / "scheduler" / "scheduler_config.json").read_text())
T2I = json.loads((ASSETS / "t2i" / "scheduler" / "scheduler_config.json").read_text())
STEPS = (1, 2, 5, 12, 25, 50)

PAIRS = {
    "ddim": (lean.DDIM, diffusers.DDIMScheduler),
    "inverse": (lean.DDIMInverse, diffusers.DDIMInverseScheduler),
    "dpm": (lean.DPMSolverMultistep, diffusers.DPMSolverMultistepScheduler),
    "unipc": (lean.UniPCMultistep, diffusers.UniPCMultistepScheduler),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Thousands of tiny tensor ops: with 2 intra-op threads on a busy machine each costs ~1 ms
    more in thread wake-ups, so these tests run on one and give the setting back."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fake_model(alphas_cumprod: torch.Tensor, prediction_type: str):
    """A deterministic stand-in for a UNet: a smooth guess of the clean sample from (x, t),
    returned as the prediction type asks (so the loop stays at a sane scale)."""
    ac = alphas_cumprod.double().tolist()

    def model(x: torch.Tensor, t) -> torch.Tensor:
        a = ac[int(t)]
        y = a ** 0.5 * x + 0.05 * math.sin(int(t) / 37.0)
        x0 = 0.9 * y / (1 + y * y) ** 0.5  # smooth, bounded (tanh is oddly slow here)
        if prediction_type == "sample":
            return x0
        eps = (x - a ** 0.5 * x0) / (1 - a) ** 0.5
        if prediction_type == "epsilon":
            return eps
        return a ** 0.5 * eps - (1 - a) ** 0.5 * x0

    return model


def start(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    x = torch.randn((2, 4, 6, 5), generator=g)
    return 0.5 * x if kind == "inverse" else x


def run_loop(sched, model, x):
    x = x * sched.init_noise_sigma
    for t in sched.timesteps:
        x = sched.step(model(sched.scale_model_input(x, t), t), t, x).prev_sample
    return x


def compare(kind: str, config: dict, steps=STEPS, **overrides):
    ours_cls, ref_cls = PAIRS[kind]
    ours, ref = ours_cls.from_config(config, **overrides), ref_cls.from_config(config, **overrides)
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)
    for key, value in ours.config.items():
        if not key.startswith("_"):
            assert ref.config[key] == value, key
    model = fake_model(ref.alphas_cumprod, ours.config.prediction_type)
    for n in steps:
        ours.set_timesteps(n)
        ref.set_timesteps(n)
        assert ours.timesteps.dtype == torch.int64
        assert torch.equal(ours.timesteps, ref.timesteps), (kind, n, ours.timesteps, ref.timesteps)
        x = start(kind)
        got, want = run_loop(ours, model, x), run_loop(ref, model, x)
        assert torch.isfinite(want).all()
        err = (got - want).abs().max().item()
        assert err <= 1e-5, (kind, n, err)


def _grid():
    cases = []
    for kind in PAIRS:
        for base_name, base in (("music", MUSIC), ("t2i", T2I)):
            for pred in ("epsilon", "v_prediction", "sample"):
                if base_name == "t2i" and pred != "epsilon":
                    continue  # the two shipped configs differ only in prediction_type
                for spacing in ("leading", "trailing", "linspace"):
                    if kind == "inverse" and spacing == "linspace":
                        continue
                    # set_alpha_to_one is a DDIM setting only; the multistep solvers ignore it
                    for alpha_one in ((False, True) if kind in ("ddim", "inverse") else (False,)):
                        if kind == "inverse" and alpha_one and pred == "sample":
                            continue  # the first step starts at alpha 1, where noise = (x - x0) / 0
                        cfg = dict(base, prediction_type=pred, timestep_spacing=spacing, set_alpha_to_one=alpha_one)
                        cases.append(pytest.param(kind, cfg, id=f"{kind}-{base_name}-{pred}-{spacing}-a1{int(alpha_one)}"))
    return cases


@pytest.mark.parametrize("kind,config", _grid())
def test_matches_diffusers(kind, config):
    compare(kind, config)


LINEAR = dict(MUSIC, beta_schedule="linear", beta_start=0.0001, beta_end=0.02, prediction_type="epsilon")
COSINE = dict(MUSIC, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", steps_offset=0)
ZERO_SNR = dict(MUSIC, rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction")
TRAINED = dict(MUSIC, trained_betas=torch.linspace(1e-4, 0.03, 500).tolist(), num_train_timesteps=500)
EXTRA = [
    (kind, name, cfg)
    for kind in PAIRS
    for name, cfg in (("linear", LINEAR), ("cosine", COSINE), ("zero-snr", ZERO_SNR), ("trained", TRAINED),
                      ("offset0", dict(T2I, steps_offset=0)), ("offset3", dict(T2I, steps_offset=3)))
]


@pytest.mark.parametrize("kind,name,config", EXTRA, ids=[f"{k}-{n}" for k, n, _ in EXTRA])
def test_other_schedules(kind, name, config):
    compare(kind, config, steps=(1, 5, 20))


SOLVER_VARIANTS = [
    ("dpm", dict(solver_order=1)),
    ("dpm", dict(solver_order=3)),
    ("dpm", dict(solver_order=3, lower_order_final=False)),
    ("dpm", dict(solver_type="heun")),
    ("dpm", dict(lower_order_final=False)),
    ("dpm", dict(euler_at_final=True, final_sigmas_type="sigma_min")),
    ("dpm", dict(final_sigmas_type="sigma_min", lower_order_final=False)),
    ("dpm", dict(lambda_min_clipped=-5.1, timestep_spacing="linspace")),
    ("unipc", dict(solver_order=1)),
    ("unipc", dict(solver_order=3)),
    # bh1 and noise prediction give NaN at a final sigma of 0 in diffusers as here (inf * 0)
    ("unipc", dict(solver_type="bh1", final_sigmas_type="sigma_min")),
    ("unipc", dict(predict_x0=False, final_sigmas_type="sigma_min")),
    ("unipc", dict(predict_x0=False, solver_type="bh1", final_sigmas_type="sigma_min", lower_order_final=False)),
    ("unipc", dict(disable_corrector=[0, 2])),
    ("unipc", dict(lower_order_final=False, final_sigmas_type="sigma_min")),
]


@pytest.mark.parametrize("kind,overrides", SOLVER_VARIANTS, ids=[f"{k}-{o}" for k, o in SOLVER_VARIANTS])
def test_solver_variants(kind, overrides):
    for spacing in ("leading", "trailing", "linspace"):
        compare(kind, dict(MUSIC, timestep_spacing=spacing), steps=(1, 2, 6, 20), **overrides)


def test_make_and_config():
    for name, kind in (("ddim", "ddim"), ("ddim-inverse", "inverse"), ("dpm++2m", "dpm"), ("unipc", "unipc")):
        sched = lean.make(name, MUSIC)
        assert isinstance(sched, PAIRS[kind][0])
        assert sched.config.num_train_timesteps == 1000 and sched.config.prediction_type == "v_prediction"
        assert sched.config.timestep_spacing == "leading" and sched.init_noise_sigma == 1.0
        x = torch.randn(1, 2, 3, 3)
        assert sched.scale_model_input(x, 5) is x
    assert lean.make("dpm++2m", dict(MUSIC, solver_order=3)).config.solver_order == 2
    forced = lean.make("unipc", dict(MUSIC, solver_order=3, solver_type="bh1", predict_x0=False)).config
    assert (forced.solver_order, forced.solver_type, forced.predict_x0) == (2, "bh2", True)
    assert lean.make("unipc", MUSIC, timestep_spacing="trailing").config.timestep_spacing == "trailing"
    with pytest.raises(ValueError):
        lean.make("euler", MUSIC)
    with pytest.raises(TypeError):
        lean.make("ddim", MUSIC, not_a_setting=1)
    inv = lean.DDIMInverse.from_config(T2I)
    assert inv.config.num_train_timesteps == 1000 and not inv.config.set_alpha_to_one
    # the deprecated set_alpha_to_zero still overrides set_alpha_to_one, as in diffusers
    old = dict(T2I, set_alpha_to_zero=True)
    assert lean.DDIMInverse.from_config(old).initial_alpha_cumprod.item() == \
        diffusers.DDIMInverseScheduler.from_config(old).initial_alpha_cumprod.item() == 1.0


def test_reuse_and_int_timesteps():
    """set_timesteps resets a multistep solver; plain int timesteps work as tensors do."""
    for name in ("ddim", "dpm++2m", "unipc"):
        sched = lean.make(name, T2I)
        model = fake_model(sched.alphas_cumprod, "epsilon")
        results = []
        for as_int in (False, True, False):
            sched.set_timesteps(10)
            x = start(name)
            for t in sched.timesteps:
                t = int(t) if as_int else t
                x = sched.step(model(x, t), t, x).prev_sample
            results.append(x)
        assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_add_noise_and_velocity():
    ours, ref = lean.DDIM.from_config(MUSIC), diffusers.DDIMScheduler.from_config(MUSIC)
    g = torch.Generator().manual_seed(3)
    x, noise = torch.randn((3, 4, 5, 2), generator=g), torch.randn((3, 4, 5, 2), generator=g)
    t = torch.tensor([0, 517, 999])
    assert torch.equal(ours.add_noise(x, noise, t), ref.add_noise(x, noise, t))
    assert torch.equal(ours.get_velocity(x, noise, t), ref.get_velocity(x, noise, t))


UNSUPPORTED = [
    (lean.DDIM, dict(clip_sample=True)),
    (lean.DDIM, dict(thresholding=True)),
    (lean.DDIM, dict(prediction_type="flow_prediction")),
    (lean.DDIM, dict(beta_schedule="sigmoid")),
    (lean.DDIM, dict(timestep_spacing="karras")),
    (lean.DDIMInverse, dict(timestep_spacing="linspace")),
    (lean.DDIMInverse, dict(clip_sample=True)),
    (lean.DPMSolverMultistep, dict(algorithm_type="sde-dpmsolver++")),
    (lean.DPMSolverMultistep, dict(algorithm_type="deis")),
    (lean.DPMSolverMultistep, dict(use_karras_sigmas=True)),
    (lean.DPMSolverMultistep, dict(thresholding=True)),
    (lean.DPMSolverMultistep, dict(variance_type="learned_range")),
    (lean.DPMSolverMultistep, dict(solver_order=4)),
    (lean.UniPCMultistep, dict(use_flow_sigmas=True)),
    (lean.UniPCMultistep, dict(solver_p="something")),
]


@pytest.mark.parametrize("cls,change", UNSUPPORTED, ids=[f"{c.__name__}-{d}" for c, d in UNSUPPORTED])
def test_unsupported(cls, change):
    with pytest.raises(Unsupported):
        cls.from_config(dict(MUSIC, **change))


def test_no_diffusers_import():
    code = (
        "import json, sys, torch\n"
        "from pathlib import Path\n"
        "from melfusion.lean import schedulers as s\n"
        f"cfg = json.loads(Path({str(ASSETS / 'scheduler' / 'scheduler_config.json')!r}).read_text())\n"
        "x = torch.randn(1, 2, 4, 4)\n"
        "for name in ('ddim', 'dpm++2m', 'unipc'):\n"
        "    sch = s.make(name, cfg); sch.set_timesteps(4)\n"
        "    for t in sch.timesteps: x = sch.step(0.1 * x, t, x).prev_sample\n"
        "inv = s.DDIMInverse.from_config(cfg); inv.set_timesteps(4)\n"
        "for t in inv.timesteps: x = inv.step(0.1 * x, t, x).prev_sample\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'transformers'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parents[1])
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
