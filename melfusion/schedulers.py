"""The samplers, by name: the lean runtime's where it covers the config, diffusers' otherwise.

    make_scheduler("ddim", config)          # the paper's sampler (and the models' training schedule)
    make_scheduler("ddim-inverse", config)  # the image inversion
    make_scheduler("dpm++2m", config)       # DPM-Solver++ (2M): fewer steps for the same music
    make_scheduler("unipc", config)         # UniPC (bh2)

`config` is a saved `scheduler_config.json` (a DDIM schedule); the other solvers read the same
noise schedule from it, with "trailing" timestep spacing: at a few steps their first step is the
schedule's last timestep (pure noise, where sampling starts), not one a whole stride below it. Both implementations agree to float rounding (tests/test_lean_schedulers.py).
"""
from __future__ import annotations

from melfusion.errors import MelFusionError

SOLVERS = ("ddim", "dpm++2m", "unipc")
_LIBRARY = {"ddim": "DDIMScheduler", "ddim-inverse": "DDIMInverseScheduler",
            "dpm++2m": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler"}


def make_scheduler(name: str, config: dict, lean: bool = True):
    if name not in _LIBRARY:
        raise MelFusionError(f"unknown sampler {name!r}: choose one of {', '.join(SOLVERS)}")
    config = dict(config)
    if name in ("dpm++2m", "unipc"):
        config["timestep_spacing"] = "trailing"
    if lean:
        from melfusion.lean import Unsupported
        from melfusion.lean import schedulers

        try:
            return schedulers.make(name, config)
        except Unsupported:
            pass
    import diffusers

    cls = getattr(diffusers, _LIBRARY[name])
    extra = {}
    if name == "dpm++2m":
        extra = dict(algorithm_type="dpmsolver++", solver_order=2)
    elif name == "unipc":
        extra = dict(solver_order=2, predict_x0=True, solver_type="bh2")
    return cls.from_config(config, **extra)
