"""LFDN noise schedule, training loss and the test-time reconstruction (``lfdn-reference.md`` §3.1, §4).

Timesteps are 0-based indices into the tables: ``alphas_cumprod[t]`` is ab_t, t = 0..T-1.
Even t = 0 is slightly noisy (ab_0 = 0.9985), as in the official DDPM buffers.

Reconstruction variants (``reconstruct(..., variant=...)``):

``"reference"`` reproduces the official sampler exactly. z is noised to index ``start_index`` (3) with
ab_3; then for s = start_index..1 the network is asked for x0 at t = s, eps-hat is derived with ab_s, but
the DDIM update uses the official off-by-one tables a = ab_{s-1}, a' = ab_{s-2} (a' = ab_0 for s = 1).
The last update (s = 1) has a = a' and sigma = 0 and returns x unchanged. The result is the last x, not x0'.

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
    def ddim_alphas(self, t: int, variant: str = "reference") -> tuple[float, float]:
        """(a, a') used by the DDIM update at network timestep t."""
        if variant == "reference":  # official tables, shifted by one (reference §4)
            if t < 1:
                raise ValueError("the reference sampler has no step at t = 0")
            return self.ab(t - 1), self.ab(max(t - 2, 0))
        if variant == "consistent":
            return self.ab(t), (self.ab(t - 1) if t >= 1 else 1.0)
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")

    def ddim_sigma(self, t: int, eta: float = 1.0, variant: str = "reference") -> float:
        """sigma = eta * sqrt((1 - a') / (1 - a)) * sqrt(1 - a / a')."""
        a, a_prev = self.ddim_alphas(t, variant)
        return eta * math.sqrt((1.0 - a_prev) / (1.0 - a)) * math.sqrt(max(1.0 - a / a_prev, 0.0))

    def step(self, x0_hat: Tensor, t: int, x: Tensor, *, eta: float = 1.0, noise: Tensor | None = None,
             variant: str = "reference") -> Tensor:
        """One DDIM update from x (the network input at timestep t) given the network's x0 prediction."""
        ab_t = self.ab(t)
        eps = (x - math.sqrt(ab_t) * x0_hat) / math.sqrt(1.0 - ab_t)  # model's eps at its own timestep t
        a, a_prev = self.ddim_alphas(t, variant)
        sigma = self.ddim_sigma(t, eta, variant)
        x0 = (x - math.sqrt(1.0 - a) * eps) / math.sqrt(a)
        x_prev = math.sqrt(a_prev) * x0 + math.sqrt(max(1.0 - a_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            if noise is None:
                raise ValueError(f"the step at t={t} is stochastic (sigma={sigma:.4g}) and needs noise")
            x_prev = x_prev + sigma * noise
        return x_prev


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
    for i, s in enumerate(range(start_index, 0, -1)):
        x = schedule.step(model(x, timestep(s)), s, x, eta=eta, noise=noise[:, 1 + i], variant=variant)
    if variant == "consistent":  # x is at index 0; a final deterministic step to a' = 1 returns x0-hat
        x = schedule.step(model(x, timestep(0)), 0, x, eta=eta, variant=variant)
    return x
