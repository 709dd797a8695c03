"""LFDN noise schedule, training loss and the test-time reconstruction (docs/lfdn.md (Schedule and reconstruction)).

Timesteps are 0-based indices into the tables: ``alphas_cumprod[t]`` is ab_t, t = 0..T-1.
Even t = 0 is slightly noisy (ab_0 = 0.9985), as in the official DDPM buffers.

The reconstruction is DDIM along a `DDIMTable` (ood_lightning/ddim.py) whose rows are the variant
(``reconstruct(..., variant=...)``):

``"reference"`` reproduces the official sampler exactly. z is noised to index ``start_index`` (3) with
ab_3; then for s = start_index..1 the network is asked for x0 at t = s, eps-hat is derived with ab_s, but
the DDIM update uses the official off-by-one tables a = ab_{s-1}, a' = ab_{s-2} (a' = ab_0 for s = 1): those are
the table's rows. The last update (s = 1) has a = a' and sigma = 0 and returns x unchanged. The result is the last
x, not x0'.

``"consistent"`` is the same loop with the tables that match the noise level of x, as in diffusers'
``DDIMScheduler(set_alpha_to_one=True)`` with timesteps [start_index, ..., 1, 0]: each step s maps x_s to
x_{s-1} with a = ab_s, a' = ab_{s-1}; a final step at t = 0 goes to a' = 1 (sigma = 0), i.e. it returns the
network's x0-hat at t = 0. We step to a clean x0 rather than stopping at x_0, because index 0 still carries
noise of std sqrt(1 - ab_0) = 0.039 and the score compares the result with the clean z. It uses one more
network call than the reference (start_index + 1) and the same noise draws.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from ood_lightning.ddim import DDIMTable, ddim_step, eps_from_x0, x0_from_eps

VARIANTS = ("reference", "consistent")


class LFDNSchedule:
    """The "linear" LDM schedule: betas = linspace(sqrt(beta_start), sqrt(beta_end), T)**2.

    Tables are computed in float64 and exposed in float32 (``betas``, ``alphas``, ``alphas_cumprod``), like the
    official model buffers; scalar coefficients are taken from the float64 table.
    """

    def __init__(self, num_timesteps: int = 100, beta_start: float = 0.0015, beta_end: float = 0.0195):
        self.num_timesteps = num_timesteps
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
        self._alphas_cumprod64 = torch.cumprod(1.0 - betas, dim=0)
        self.betas = betas.float()
        self.alphas = (1.0 - betas).float()
        self.alphas_cumprod = self._alphas_cumprod64.float()

    def __repr__(self) -> str:
        b = self.betas
        return f"LFDNSchedule(num_timesteps={self.num_timesteps}, beta_start={b[0]:.6g}, beta_end={b[-1]:.6g})"

    def ab(self, t: int) -> float:
        """ab_t as a Python float (float64)."""
        return float(self._alphas_cumprod64[t])

    # ---- training ---------------------------------------------------------------------------------------
    def _per_sample(self, table: Tensor, t: Tensor, like: Tensor) -> Tensor:
        return table.to(like.device)[t.to(like.device)].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """q(x_t | x0): sqrt(ab_t) x0 + sqrt(1 - ab_t) noise, with t a [B] tensor of 0-based indices."""
        ab = self._alphas_cumprod64
        return self._per_sample(ab.sqrt(), t, x0) * x0 + self._per_sample((1.0 - ab).sqrt(), t, x0) * noise

    def training_loss(self, model: Callable[[Tensor, Tensor], Tensor], x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Plain MSE between the x0 prediction at x_t and x0, averaged over batch and features (official loss)."""
        prediction = model(self.add_noise(x0, noise, t), t)
        return F.mse_loss(prediction.to(x0.dtype), x0)

    # ---- DDIM update ------------------------------------------------------------------------------------
    def ddim_table(self, start_index: int, variant: str = "reference") -> DDIMTable:
        """The reconstruction's steps as rows, from the lowest timestep up to `start_index` (see the module
        docstring): "reference" rows s = 1..start_index read at ab_{s-1} and move to ab_{max(s-2, 0)};
        "consistent" rows s = 0..start_index read at ab_s and move to ab_{s-1} (1 below index 0)."""
        if variant == "reference":
            steps = range(1, start_index + 1)
            pairs = [(self.ab(s - 1), self.ab(max(s - 2, 0))) for s in steps]
        elif variant == "consistent":
            steps = range(0, start_index + 1)
            pairs = [(self.ab(s), self.ab(s - 1) if s >= 1 else 1.0) for s in steps]
        else:
            raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
        alpha_bar, alpha_bar_to = (torch.tensor(column, dtype=torch.float64) for column in zip(*pairs))
        return DDIMTable(tuple(steps), alpha_bar, alpha_bar_to)

    def step(self, x0_hat: Tensor, x: Tensor, table: DDIMTable, i: int, *, eta: float = 1.0,
             noise: Tensor | None = None) -> Tensor:
        """Row i's DDIM update from x (the network input at timestep table.timesteps[i]) given the network's x0
        prediction; eta > 0 adds sigma * noise."""
        t = table.timesteps[i]
        eps = eps_from_x0(x, x0_hat, self.ab(t))  # model's eps at its own timestep t
        a, a_prev = float(table.alpha_bar[i]), float(table.alpha_bar_to[i])
        sigma = ddim_sigma(a, a_prev, eta)
        x_prev = ddim_step(x0_from_eps(x, eps, a), eps, a_prev, sigma)
        if sigma > 0:
            if noise is None:
                raise ValueError(f"the step at t={t} is stochastic (sigma={sigma:.4g}) and needs noise")
            x_prev = x_prev + sigma * noise
        return x_prev


def ddim_sigma(alpha_bar: float, alpha_bar_to: float, eta: float = 1.0) -> float:
    """DDIM's noise scale sigma = eta * sqrt((1 - a') / (1 - a)) * sqrt(1 - a / a')."""
    return eta * math.sqrt((1.0 - alpha_bar_to) / (1.0 - alpha_bar)) * math.sqrt(
        max(1.0 - alpha_bar / alpha_bar_to, 0.0))


def reconstruct_noise_count(start_index: int = 3) -> int:
    """Noise draws per sample for ``reconstruct``: one forward-noise draw plus one xi per step s = start_index..1."""
    return 1 + start_index


def reconstruct(
    model: Callable[[Tensor, Tensor], Tensor],
    z: Tensor,
    schedule: LFDNSchedule,
    noise: Tensor,
    *,
    start_index: int = 3,
    eta: float = 1.0,
    variant: str = "reference",
) -> Tensor:
    """Noise z [B, D] to ``start_index`` and denoise it back (see the module docstring for the two variants).

    ``noise`` is [B, reconstruct_noise_count(start_index), D]: ``noise[:, 0]`` is the forward noise and
    ``noise[:, i]`` the xi of the i-th step, so that a sample's reconstruction depends on its own noise only.
    Gradients are not disabled here; call it under ``torch.no_grad()`` / ``inference_mode`` for scoring.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    if not 1 <= start_index < schedule.num_timesteps:
        raise ValueError(f"start_index must be in [1, {schedule.num_timesteps - 1}], got {start_index}")
    expected = (z.shape[0], reconstruct_noise_count(start_index), *z.shape[1:])
    if tuple(noise.shape) != expected:
        raise ValueError(f"noise must have shape {expected} (batch, 1 + start_index, features), got {tuple(noise.shape)}")

    def timestep(s: int) -> Tensor:
        return torch.full((z.shape[0],), s, dtype=torch.long, device=z.device)

    noise = noise.to(device=z.device, dtype=z.dtype)
    x = schedule.add_noise(z, noise[:, 0], timestep(start_index))
    table = schedule.ddim_table(start_index, variant)
    for i in reversed(range(len(table))):  # the reference's rows are s = start_index..1, the consistent's add s = 0
        s = table.timesteps[i]
        xi = noise[:, start_index - s + 1] if s >= 1 else None  # the xi of step s; the final s = 0 step has none
        x = schedule.step(model(x, timestep(s)), x, table, i, eta=eta, noise=xi)
    return x
