"""DDIM arithmetic (Song et al. 2021, eq. 12 with eta = 0) on a respaced noise schedule, written out by hand.

DiffGuard's guided-diffusion path re-derives epsilon from a clipped x0 estimate and adds classifier guidance
between the two, which diffusers' `DDIMScheduler.step` cannot express; so the loops in `inversion.py` and
`resynthesis.py` use these three formulas and the schedule's alpha-bar table directly:

    x0  = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)
    x_s = sqrt(a_s) x0 + sqrt(1 - a_s) eps          (a = cumulative alpha product, "alpha-bar")
"""
from __future__ import annotations

import math

import numpy as np
from torch import Tensor


def train_betas(schedule: str, beta_start: float, beta_end: float, num_train_timesteps: int) -> np.ndarray:
    """The training betas in float64, as guided-diffusion ("linear") and latent-diffusion ("scaled_linear":
    linspace of square roots, squared) compute them."""
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
    if schedule == "scaled_linear":
        return np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=np.float64) ** 2
    raise ValueError(f"beta_schedule must be 'linear' or 'scaled_linear', got {schedule!r}")


class RespacedSchedule:
    """guided-diffusion's "ddimN" respacing: N evenly strided training timesteps {0, s, 2s, ...}.

    Respaced index k stands for training timestep `timesteps[k]` (what the UNet is given) with alpha-bar
    `alpha_bar(k)`; `alpha_bar(-1)` = 1 (the clean image) and `alpha_bar(N)` = 0, guided-diffusion's
    `alphas_cumprod_prev[0]` and `alphas_cumprod_next[-1]`.
    """

    def __init__(self, num_steps: int = 100, beta_schedule: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02, num_train_timesteps: int = 1000):
        strides = [s for s in range(1, num_train_timesteps + 1) if len(range(0, num_train_timesteps, s)) == num_steps]
        if not strides:
            raise ValueError(f"cannot take {num_steps} evenly strided steps of {num_train_timesteps} timesteps")
        self.stride = strides[0]
        self.num_steps = num_steps
        self.timesteps = list(range(0, num_train_timesteps, self.stride))
        full = np.cumprod(1.0 - train_betas(beta_schedule, beta_start, beta_end, num_train_timesteps))
        self.alphas_cumprod = full[self.timesteps]

    def alpha_bar(self, k: int) -> float:
        if k < 0:
            return 1.0
        if k >= self.num_steps:
            return 0.0
        return float(self.alphas_cumprod[k])

    def __repr__(self) -> str:
        return f"RespacedSchedule(ddim{self.num_steps}: timesteps 0..{self.timesteps[-1]} stride {self.stride})"


def x0_from_eps(x: Tensor, eps: Tensor, alpha_bar: float) -> Tensor:
    return (x - math.sqrt(1.0 - alpha_bar) * eps) / math.sqrt(alpha_bar)


def eps_from_x0(x: Tensor, x0: Tensor, alpha_bar: float) -> Tensor:
    return (x - math.sqrt(alpha_bar) * x0) / math.sqrt(1.0 - alpha_bar)


def ddim_step(x0: Tensor, eps: Tensor, alpha_bar_to: float) -> Tensor:
    """The deterministic DDIM move to the noise level `alpha_bar_to` (up for inversion, down for sampling)."""
    return math.sqrt(alpha_bar_to) * x0 + math.sqrt(1.0 - alpha_bar_to) * eps
