"""Sampling schedulers on plain torch/numpy: DDIM, DDIM inversion, DPM-Solver++ and UniPC.

Each reads the scheduler_config.json diffusers wrote (a DDIMScheduler's, as melfusion saves)
and computes what diffusers 0.42's scheduler built `from_config` of that dict computes: the
same `timesteps`, the same `step()` outputs to float rounding (the arithmetic is the library's,
operation for operation, on the same float32 schedule tensors). `tests/test_lean_schedulers.py`
holds each to its library over whole sampling loops.

As in diffusers, a scheduler built from another scheduler's config takes the keys it knows and
ignores the rest: `DPMSolverMultistep.from_config(<a DDIM config>)` keeps the DDIM config's
`timestep_spacing` and `steps_offset` and drops `set_alpha_to_one`/`clip_sample`. With
melfusion's "leading" spacing and offset 1, 25 DPM-Solver/UniPC steps run t = 951, 913, ..., 39
(then to sigma 0), where DDIM's run 961, 921, ..., 1; `make(..., timestep_spacing="trailing")`
starts them at 999. A known key with a value not
written here raises `Unsupported`, so the caller can fall back to the library.

    sched = make("dpm++2m", config)          # or "ddim", "unipc", "ddim-inverse"
    sched.set_timesteps(25)
    for t in sched.timesteps:
        x = sched.step(model(x, t), t, x).prev_sample
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from melfusion.lean import Config, Unsupported, require

__all__ = ["DDIM", "DDIMInverse", "DPMSolverMultistep", "UniPCMultistep", "StepOutput", "make", "NAMES"]


@dataclass
class StepOutput:
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


# ----------------------------------------------------------------------------------------------
# The training noise schedule (shared by every scheduler)

_SCHEDULE_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "rescale_betas_zero_snr": False,
}

_SPACINGS = ("leading", "trailing", "linspace")


def _cosine_betas(n: int, max_beta: float = 0.999) -> torch.Tensor:
    """Glide's squared-cosine schedule ("squaredcos_cap_v2"), in float64 then rounded as diffusers does."""
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)],
                        dtype=torch.float32)


def _zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Betas rescaled so the last timestep has zero signal (arXiv 2305.08891, algorithm 1)."""
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root -= last
    root *= first / (first - last)
    bar = root ** 2
    return 1 - torch.cat([bar[0:1], bar[1:] / bar[:-1]])


def _betas(cfg: Config) -> torch.Tensor:
    n = cfg.num_train_timesteps
    if cfg.trained_betas is not None:
        betas = torch.tensor(cfg.trained_betas, dtype=torch.float32)
    elif cfg.beta_schedule == "linear":
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, n, dtype=torch.float32)
    elif cfg.beta_schedule == "scaled_linear":
        betas = torch.linspace(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, n, dtype=torch.float32) ** 2
    else:  # "squaredcos_cap_v2", checked in from_config
        betas = _cosine_betas(n)
    if cfg.rescale_betas_zero_snr:
        betas = _zero_terminal_snr(betas)
    return betas


class _Scheduler:
    """Config handling shared by the schedulers: `_defaults` are the diffusers class's
    constructor defaults; `from_config` keeps the known keys of the dict it is given."""

    _class_name = ""
    _defaults: dict = {}
    order = 1
    init_noise_sigma = 1.0

    def __init__(self, config: Config):
        self.config = config

    @classmethod
    def from_config(cls, config: dict | None = None, **overrides):
        """Build from a saved scheduler config dict (keys this scheduler does not know are ignored,
        as diffusers ignores them); `overrides` replace config values."""
        cfg = {k: list(v) if isinstance(v, list) else v for k, v in cls._defaults.items()}
        given = dict(config or {})
        cls._translate(given)
        for key, value in given.items():
            if key in cfg:
                cfg[key] = value
        for key, value in overrides.items():
            if key not in cfg:
                raise TypeError(f"{cls.__name__} has no setting {key!r}")
            cfg[key] = value
        cfg = Config(cfg, _class_name=cls._class_name)
        cls._check_schedule(cfg)
        cls._check(cfg)
        return cls(cfg)

    @classmethod
    def _translate(cls, given: dict) -> None:
        """Rewrite deprecated keys the library still honours (in place)."""

    @staticmethod
    def _check_schedule(cfg: Config) -> None:
        n = cfg.num_train_timesteps
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise Unsupported(f"num_train_timesteps = {n!r}")
        if cfg.trained_betas is None:
            require(cfg, "beta_schedule", ("linear", "scaled_linear", "squaredcos_cap_v2"))
        elif len(cfg.trained_betas) != n:
            raise Unsupported(f"trained_betas has {len(cfg.trained_betas)} values for {n} timesteps")
        require(cfg, "rescale_betas_zero_snr", (False, True))
        require(cfg, "timestep_spacing", _SPACINGS)
        if not isinstance(cfg.steps_offset, int) or isinstance(cfg.steps_offset, bool):
            raise Unsupported(f"steps_offset = {cfg.steps_offset!r}")

    @classmethod
    def _check(cls, cfg: Config) -> None:
        raise NotImplementedError

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def _check_steps(self, n: int) -> None:
        if n > self.config.num_train_timesteps:
            raise ValueError(f"num_inference_steps {n} is more than num_train_timesteps "
                             f"{self.config.num_train_timesteps}")
        if n < 1:
            raise ValueError(f"num_inference_steps {n} must be at least 1")


# ----------------------------------------------------------------------------------------------
# DDIM (eta = 0) and its inversion

_DDIM_DEFAULTS = {
    **_SCHEDULE_DEFAULTS,
    "clip_sample": True,
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "clip_sample_range": 1.0,
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
}


def _x0_and_eps(prediction_type: str, model_output, sample, alpha_prod_t, beta_prod_t):
    """DDIM's predicted clean sample and noise from the model output (diffusers' expressions)."""
    if prediction_type == "epsilon":
        return (sample - beta_prod_t ** 0.5 * model_output) / alpha_prod_t ** 0.5, model_output
    if prediction_type == "sample":
        return model_output, (sample - alpha_prod_t ** 0.5 * model_output) / beta_prod_t ** 0.5
    # v_prediction
    return (alpha_prod_t ** 0.5 * sample - beta_prod_t ** 0.5 * model_output,
            alpha_prod_t ** 0.5 * model_output + beta_prod_t ** 0.5 * sample)


class DDIM(_Scheduler):
    """diffusers' `DDIMScheduler`, deterministic (eta = 0), without clipping or thresholding."""

    _class_name = "DDIMScheduler"
    _defaults = _DDIM_DEFAULTS

    @classmethod
    def _check(cls, cfg: Config) -> None:
        require(cfg, "prediction_type", ("epsilon", "v_prediction", "sample"))
        require(cfg, "clip_sample", (False,))
        require(cfg, "thresholding", (False,))
        require(cfg, "set_alpha_to_one", (False, True))

    def __init__(self, config: Config):
        super().__init__(config)
        self.betas = _betas(config)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.final_alpha_cumprod = torch.tensor(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]
        self.num_inference_steps = None
        self.timesteps = torch.arange(config.num_train_timesteps - 1, -1, -1, dtype=torch.int64)

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        self._check_steps(num_inference_steps)
        self.num_inference_steps = n = num_inference_steps
        T, spacing = self.config.num_train_timesteps, self.config.timestep_spacing
        if spacing == "linspace":
            ts = np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
        elif spacing == "leading":
            ts = (np.arange(0, n) * (T // n)).round()[::-1].copy().astype(np.int64) + self.config.steps_offset
        else:  # trailing
            ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
        self.timesteps = torch.from_numpy(ts).to(device)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             return_dict: bool = True, **unused):
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if eta != 0.0:
            raise Unsupported("DDIM with eta > 0")
        t = int(timestep)
        # Always one stride back, whatever the spacing (as diffusers does).
        prev = t - self.config.num_train_timesteps // self.num_inference_steps
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t
        x0, eps = _x0_and_eps(self.config.prediction_type, model_output, sample, alpha_prod_t, beta_prod_t)
        # std_dev_t is 0 at eta = 0: (1 - a_prev - 0) ** 0.5
        prev_sample = alpha_prod_prev ** 0.5 * x0 + (1 - alpha_prod_prev - 0.0) ** 0.5 * eps
        if not return_dict:
            return prev_sample, x0
        return StepOutput(prev_sample=prev_sample, pred_original_sample=x0)

    def _scales(self, timesteps: torch.Tensor, like: torch.Tensor):
        self.alphas_cumprod = self.alphas_cumprod.to(device=like.device)
        ac = self.alphas_cumprod.to(dtype=like.dtype)[timesteps.to(like.device)]
        shape = (-1,) + (1,) * (like.dim() - 1)
        return (ac ** 0.5).flatten().reshape(shape), ((1 - ac) ** 0.5).flatten().reshape(shape)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        a, s = self._scales(timesteps, original_samples)
        return a * original_samples + s * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        a, s = self._scales(timesteps, sample)
        return a * noise - s * sample


class DDIMInverse(_Scheduler):
    """diffusers' `DDIMInverseScheduler`: DDIM run from the clean sample towards noise.

    Timesteps run upwards ("leading": 0, s, 2s, ... plus steps_offset; "trailing": s-1, ..., T-1;
    "linspace" is not offered, as in the library). The step at t takes the sample from noise
    level t - T//n (clamped to T-1; below 0 it is the start, at `initial_alpha_cumprod`: 1 with
    set_alpha_to_one, else alphas_cumprod[0]) up to noise level t. With melfusion's leading
    spacing and offset 1 the first step goes from alphas_cumprod[0] to t = 1 and the last ends
    at t = 1 + (n-1)*T//n, never at T-1. `thresholding` is not a setting of this class (ignored).
    """

    _class_name = "DDIMInverseScheduler"
    _defaults = {k: v for k, v in _DDIM_DEFAULTS.items()
                 if k not in ("thresholding", "dynamic_thresholding_ratio", "sample_max_value")}

    @classmethod
    def _translate(cls, given: dict) -> None:
        # The deprecated `set_alpha_to_zero`, when given, replaces set_alpha_to_one (as in diffusers).
        if given.get("set_alpha_to_zero") is not None:
            given["set_alpha_to_one"] = given["set_alpha_to_zero"]

    @classmethod
    def _check(cls, cfg: Config) -> None:
        require(cfg, "prediction_type", ("epsilon", "v_prediction", "sample"))
        require(cfg, "clip_sample", (False,))
        require(cfg, "set_alpha_to_one", (False, True))
        require(cfg, "timestep_spacing", ("leading", "trailing"))

    def __init__(self, config: Config):
        super().__init__(config)
        self.betas = _betas(config)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.initial_alpha_cumprod = torch.tensor(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]
        self.num_inference_steps = None
        self.timesteps = torch.arange(0, config.num_train_timesteps, dtype=torch.int64)

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        self._check_steps(num_inference_steps)
        self.num_inference_steps = n = num_inference_steps
        T = self.config.num_train_timesteps
        if self.config.timestep_spacing == "leading":
            ts = (np.arange(0, n) * (T // n)).round().copy().astype(np.int64) + self.config.steps_offset
        else:  # trailing
            ts = np.round(np.arange(T, 0, -T / n)[::-1]).astype(np.int64) - 1
        self.timesteps = torch.from_numpy(ts).to(device)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        T = self.config.num_train_timesteps
        target = int(timestep)
        source = min(target - T // self.num_inference_steps, T - 1)
        alpha_prod_t = self.alphas_cumprod[source] if source >= 0 else self.initial_alpha_cumprod
        alpha_prod_next = self.alphas_cumprod[target]
        beta_prod_t = 1 - alpha_prod_t
        x0, eps = _x0_and_eps(self.config.prediction_type, model_output, sample, alpha_prod_t, beta_prod_t)
        prev_sample = alpha_prod_next ** 0.5 * x0 + (1 - alpha_prod_next) ** 0.5 * eps
        if not return_dict:
            return prev_sample, x0
        return StepOutput(prev_sample=prev_sample, pred_original_sample=x0)


# ----------------------------------------------------------------------------------------------
# Multistep solvers in half-log-SNR (DPM-Solver++, UniPC)

class _Multistep(_Scheduler):
    """What DPM-Solver and UniPC share: the sigma schedule, the timesteps, the step counter."""

    _clip_lambda = False  # DPM-Solver's lambda_min_clipped shortens the schedule; UniPC has none

    def __init__(self, config: Config):
        super().__init__(config)
        self.betas = _betas(config)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        if config.rescale_betas_zero_snr:
            # zero terminal SNR would make lambda infinite at T-1; diffusers nudges it (2**-24)
            self.alphas_cumprod[-1] = 2 ** -24
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.num_inference_steps = None
        T = config.num_train_timesteps
        self.timesteps = torch.from_numpy(np.linspace(0, T - 1, T, dtype=np.float32)[::-1].copy())
        self._reset()
        self._begin_index = None

    def _reset(self) -> None:
        self.model_outputs = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self._step_index = None

    @property
    def step_index(self):
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        self._check_steps(num_inference_steps)
        n, T, cfg = num_inference_steps, self.config.num_train_timesteps, self.config
        last = T
        if self._clip_lambda:
            clipped = torch.searchsorted(torch.flip(self.lambda_t, [0]), cfg.lambda_min_clipped)
            last = int((T - clipped).numpy().item())
        if cfg.timestep_spacing == "linspace":
            ts = np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        elif cfg.timestep_spacing == "leading":
            ratio = last // (n + 1)
            ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + cfg.steps_offset
        else:  # trailing
            ts = np.arange(last, 0, -T / n).round().copy().astype(np.int64) - 1
        base = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()
        sigmas = np.interp(ts, np.arange(0, len(base)), base)
        if cfg.final_sigmas_type == "sigma_min":
            last_sigma = (((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5).item()
        else:
            last_sigma = 0
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [last_sigma]]).astype(np.float32))
        self.timesteps = torch.from_numpy(ts).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(ts)
        self._reset()
        self._begin_index = None

    def _init_step_index(self, timestep) -> None:
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.to(self.timesteps.device)
        hits = (self.timesteps == timestep).nonzero()
        # a repeated timestep starts at its second place; an unknown one at the end (diffusers' rule)
        if len(hits) == 0:
            self._step_index = len(self.timesteps) - 1
        else:
            self._step_index = hits[1 if len(hits) > 1 else 0].item()

    @staticmethod
    def _alpha_sigma(sigma: torch.Tensor):
        alpha = 1 / ((sigma ** 2 + 1) ** 0.5)
        return alpha, sigma * alpha

    def _lambda(self, index: int):
        """alpha, sigma and log-SNR/2 at step `index`, as 0-dim CPU tensors (they combine with
        samples on any device; the coefficients never leave the CPU)."""
        alpha, sigma = self._alpha_sigma(self.sigmas[index])
        return alpha, sigma, torch.log(alpha) - torch.log(sigma)

    def _x0(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The data prediction of the model output at the current step."""
        kind = self.config.prediction_type
        if kind == "sample":
            return model_output
        alpha, sigma = self._alpha_sigma(self.sigmas[self._step_index])
        if kind == "epsilon":
            return (sample - sigma * model_output) / alpha
        return alpha * sample - sigma * model_output  # v_prediction

    def _eps(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The noise prediction of the model output at the current step."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            return model_output
        alpha, sigma = self._alpha_sigma(self.sigmas[self._step_index])
        if kind == "sample":
            return (sample - alpha * model_output) / sigma
        return alpha * model_output + sigma * sample  # v_prediction

    @staticmethod
    def _check_common(cfg: Config) -> None:
        require(cfg, "prediction_type", ("epsilon", "v_prediction", "sample"))
        require(cfg, "thresholding", (False,))
        require(cfg, "solver_order", (1, 2, 3))
        require(cfg, "lower_order_final", (False, True))
        require(cfg, "final_sigmas_type", ("zero", "sigma_min"))
        for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas",
                    "use_dynamic_shifting"):
            require(cfg, key, (False,))


_MULTISTEP_DEFAULTS = {
    **_SCHEDULE_DEFAULTS,
    "solver_order": 2,
    "prediction_type": "epsilon",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
    "lower_order_final": True,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "use_flow_sigmas": False,
    "flow_shift": 1.0,
    "final_sigmas_type": "zero",
    "timestep_spacing": "linspace",
    "steps_offset": 0,
    "use_dynamic_shifting": False,
    "time_shift_type": "exponential",
}


class DPMSolverMultistep(_Multistep):
    """diffusers' `DPMSolverMultistepScheduler` with algorithm "dpmsolver++" (orders 1-3,
    "midpoint" or "heun" for order 2): the deterministic multistep data-prediction solver."""

    _class_name = "DPMSolverMultistepScheduler"
    _clip_lambda = True
    _defaults = {
        **_MULTISTEP_DEFAULTS,
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "euler_at_final": False,
        "use_lu_lambdas": False,
        "lambda_min_clipped": -float("inf"),
        "variance_type": None,
    }

    @classmethod
    def _translate(cls, given: dict) -> None:
        # diffusers maps UniPC's solver types onto its own
        if given.get("solver_type") in ("logrho", "bh1", "bh2"):
            given["solver_type"] = "midpoint"

    @classmethod
    def _check(cls, cfg: Config) -> None:
        cls._check_common(cfg)
        require(cfg, "algorithm_type", ("dpmsolver++",))
        require(cfg, "solver_type", ("midpoint", "heun"))
        require(cfg, "euler_at_final", (False, True))
        require(cfg, "use_lu_lambdas", (False,))
        require(cfg, "variance_type", (None,))
        if not isinstance(cfg.lambda_min_clipped, (int, float)) or isinstance(cfg.lambda_min_clipped, bool):
            raise Unsupported(f"lambda_min_clipped = {cfg.lambda_min_clipped!r}")

    def _first_order(self, m0, sample):
        alpha_t, sigma_t, lambda_t = self._lambda(self._step_index + 1)
        _, sigma_s, lambda_s = self._lambda(self._step_index)
        h = lambda_t - lambda_s
        return (sigma_t / sigma_s) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * m0

    def _second_order(self, sample):
        i = self._step_index
        alpha_t, sigma_t, lambda_t = self._lambda(i + 1)
        _, sigma_s0, lambda_s0 = self._lambda(i)
        _, _, lambda_s1 = self._lambda(i - 1)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        D0, D1 = m0, (1.0 / r0) * (m0 - m1)
        if self.config.solver_type == "midpoint":
            return ((sigma_t / sigma_s0) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * D0
                    - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * D1)
        return ((sigma_t / sigma_s0) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * D0
                + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * D1)

    def _third_order(self, sample):
        i = self._step_index
        alpha_t, sigma_t, lambda_t = self._lambda(i + 1)
        _, sigma_s0, lambda_s0 = self._lambda(i)
        _, _, lambda_s1 = self._lambda(i - 1)
        _, _, lambda_s2 = self._lambda(i - 2)
        m0, m1, m2 = self.model_outputs[-1], self.model_outputs[-2], self.model_outputs[-3]
        h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
        r0, r1 = h_0 / h, h_1 / h
        D1_0, D1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
        D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1)
        D2 = (1.0 / (r0 + r1)) * (D1_0 - D1_1)
        return ((sigma_t / sigma_s0) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * m0
                + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * D1
                - (alpha_t * ((torch.exp(-h) - 1.0 + h) / h ** 2 - 0.5)) * D2)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True,
             **unused):
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if self._step_index is None:
            self._init_step_index(timestep)
        cfg, i, n = self.config, self._step_index, len(self.timesteps)
        short = cfg.lower_order_final and n < 15
        final_first = i == n - 1 and (cfg.euler_at_final or short or cfg.final_sigmas_type == "zero")
        second_last = i == n - 2 and short
        x0 = self._x0(model_output, sample)
        self.model_outputs = self.model_outputs[1:] + [x0]
        sample = sample.to(torch.float32)
        if cfg.solver_order == 1 or self.lower_order_nums < 1 or final_first:
            prev = self._first_order(x0, sample)
        elif cfg.solver_order == 2 or self.lower_order_nums < 2 or second_last:
            prev = self._second_order(sample)
        else:
            prev = self._third_order(sample)
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg.solver_order)
        prev = prev.to(model_output.dtype)
        self._step_index += 1
        return StepOutput(prev_sample=prev) if return_dict else (prev,)


class UniPCMultistep(_Multistep):
    """diffusers' `UniPCMultistepScheduler` (predictor UniP + corrector UniC, "bh1"/"bh2",
    data or noise prediction), without a separate `solver_p`.

    As in diffusers, "bh1" or `predict_x0=False` with `final_sigmas_type="zero"` (the default)
    gives NaN at the last step (an infinite log-SNR step times 0); use "sigma_min" with those."""

    _class_name = "UniPCMultistepScheduler"
    _defaults = {
        **_MULTISTEP_DEFAULTS,
        "predict_x0": True,
        "solver_type": "bh2",
        "disable_corrector": [],
        "solver_p": None,
        "sigma_min": None,
        "sigma_max": None,
        "shift_terminal": None,
    }

    @classmethod
    def _translate(cls, given: dict) -> None:
        if given.get("solver_type") in ("midpoint", "heun", "logrho"):
            given["solver_type"] = "bh2"

    @classmethod
    def _check(cls, cfg: Config) -> None:
        cls._check_common(cfg)
        require(cfg, "predict_x0", (False, True))
        require(cfg, "solver_type", ("bh1", "bh2"))
        require(cfg, "solver_p", (None,))
        require(cfg, "shift_terminal", (None,))
        if not isinstance(cfg.disable_corrector, (list, tuple)) or \
                not all(isinstance(k, int) for k in cfg.disable_corrector):
            raise Unsupported(f"disable_corrector = {cfg.disable_corrector!r}")

    def _reset(self) -> None:
        super()._reset()
        self.last_sample = None
        self.this_order = None

    def _coefficients(self, h):
        """hh, h*phi_1(hh), B(h) and a function giving the order's right-hand side b."""
        hh = -h if self.config.predict_x0 else h
        h_phi_1 = torch.expm1(hh)
        B_h = hh if self.config.solver_type == "bh1" else torch.expm1(hh)

        def rhs(order):
            b, h_phi_k, factorial = [], h_phi_1 / hh - 1, 1
            for k in range(1, order + 1):
                b.append(h_phi_k * factorial / B_h)
                factorial *= k + 1
                h_phi_k = h_phi_k / hh - 1 / factorial
            return torch.stack(b)

        return h_phi_1, B_h, rhs

    def _base(self, x, m0, alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1):
        if self.config.predict_x0:
            return sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0, alpha_t
        return alpha_t / alpha_s0 * x - sigma_t * h_phi_1 * m0, sigma_t

    def _predict(self, x: torch.Tensor, order: int) -> torch.Tensor:
        """UniP: from x at step i to step i+1 with the last `order` converted outputs."""
        device, i = x.device, self._step_index
        m0 = self.model_outputs[-1]
        alpha_t, sigma_t, lambda_t = self._lambda(i + 1)
        alpha_s0, sigma_s0, lambda_s0 = self._lambda(i)
        h = lambda_t - lambda_s0
        rks, D1s = [], []
        for k in range(1, order):
            _, _, lambda_sk = self._lambda(i - k)
            rk = (lambda_sk - lambda_s0) / h
            rks.append(rk)
            D1s.append((self.model_outputs[-(k + 1)] - m0) / rk)
        h_phi_1, B_h, rhs = self._coefficients(h)
        x_t_, scale = self._base(x, m0, alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1)
        if D1s:
            if order == 2:
                rhos_p = torch.ones(1, dtype=x.dtype, device=device) * 0.5
            else:
                rks.append(torch.ones(()))
                R = torch.stack([torch.pow(torch.stack(rks), k - 1) for k in range(1, order + 1)])
                rhos_p = torch.linalg.solve(R[:-1, :-1], rhs(order)[:-1]).to(device).to(x.dtype)
            pred_res = torch.einsum("k,bkc...->bc...", rhos_p, torch.stack(D1s, dim=1))
        else:
            pred_res = 0
        return (x_t_ - scale * B_h * pred_res).to(x.dtype)

    def _correct(self, model_t: torch.Tensor, x: torch.Tensor, order: int) -> torch.Tensor:
        """UniC: redo the last step (i-1 -> i) from `x` with the new output `model_t` at step i."""
        device, i = x.device, self._step_index
        m0 = self.model_outputs[-1]
        alpha_t, sigma_t, lambda_t = self._lambda(i)
        alpha_s0, sigma_s0, lambda_s0 = self._lambda(i - 1)
        h = lambda_t - lambda_s0
        rks, D1s = [], []
        for k in range(1, order):
            _, _, lambda_sk = self._lambda(i - (k + 1))
            rk = (lambda_sk - lambda_s0) / h
            rks.append(rk)
            D1s.append((self.model_outputs[-(k + 1)] - m0) / rk)
        h_phi_1, B_h, rhs = self._coefficients(h)
        if order == 1:
            rhos_c = torch.ones(1, dtype=x.dtype, device=device) * 0.5
        else:
            rks.append(torch.ones(()))
            R = torch.stack([torch.pow(torch.stack(rks), k - 1) for k in range(1, order + 1)])
            rhos_c = torch.linalg.solve(R, rhs(order)).to(device).to(x.dtype)
        x_t_, scale = self._base(x, m0, alpha_t, sigma_t, alpha_s0, sigma_s0, h_phi_1)
        corr_res = torch.einsum("k,bkc...->bc...", rhos_c[:-1], torch.stack(D1s, dim=1)) if D1s else 0
        return (x_t_ - scale * B_h * (corr_res + rhos_c[-1] * (model_t - m0))).to(x.dtype)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        if self._step_index is None:
            self._init_step_index(timestep)
        cfg, i = self.config, self._step_index
        converted = self._x0(model_output, sample) if cfg.predict_x0 else self._eps(model_output, sample)
        if i > 0 and (i - 1) not in cfg.disable_corrector and self.last_sample is not None:
            sample = self._correct(converted, self.last_sample, self.this_order)
        self.model_outputs = self.model_outputs[1:] + [converted]
        order = min(cfg.solver_order, len(self.timesteps) - i) if cfg.lower_order_final else cfg.solver_order
        self.this_order = min(order, self.lower_order_nums + 1)
        self.last_sample = sample
        prev = self._predict(sample, self.this_order)
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg.solver_order)
        self._step_index += 1
        return StepOutput(prev_sample=prev) if return_dict else (prev,)


# ----------------------------------------------------------------------------------------------

NAMES = {"ddim": DDIM, "ddim-inverse": DDIMInverse, "dpm++2m": DPMSolverMultistep, "unipc": UniPCMultistep}

# What each name means whatever the config says (a DDIM config has none of these keys).
_NAMED = {"dpm++2m": {"solver_order": 2, "algorithm_type": "dpmsolver++"},
          "unipc": {"solver_order": 2, "predict_x0": True, "solver_type": "bh2"}}


def make(name: str, config: dict, **overrides):
    """The sampler `name` ("ddim", "ddim-inverse", "dpm++2m", "unipc") built from a saved
    scheduler config (a DDIM config as melfusion saves, or that sampler's own); `overrides`
    replace settings, e.g. `timestep_spacing="trailing"`. "dpm++2m" is DPM-Solver++ of order 2
    and "unipc" UniPC bh2 of order 2 on data prediction, whatever the config says."""
    try:
        cls = NAMES[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; one of {sorted(NAMES)}") from None
    return cls.from_config(config, **{**_NAMED.get(name, {}), **overrides})
