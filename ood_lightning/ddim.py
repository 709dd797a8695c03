"""DDIM (Song et al. 2021, eq. 12): the samplers' step tables as data, and the update.

Every DDIM sampler in this project (DiffGuard's two pipelines, LFDN's reconstruction, the sample grids of the
diffusion training) is a loop over the rows of a `DDIMTable`. Row i says which training timestep the model is given
and between which two noise levels (alpha-bar, the cumulative alpha product) the step moves:

    x0  = (x - sqrt(1 - a) eps) / sqrt(a)           (a = alpha_bar[i]: the level the model's epsilon is read at)
    eps = (x - sqrt(a) x0) / sqrt(1 - a)            (epsilon re-derived from a clipped x0)
    x'  = sqrt(a') x0 + sqrt(1 - a') eps            (a' = alpha_bar_to[i]: up for inversion, down for sampling)

What differs between the references is only which rows they take, so each quirk is a table, not a code path:
guided-diffusion's "ddimN" respacing (DiffGuard GDM), CompVis' sub-sequence [1, 41, ..., 961] whose inversion
evaluates the model at the level it moves to (DiffGuard LDM), diffusers' "leading" spacing (the training grids),
LFDN's official tables shifted by one (docs/lfdn.md (Schedule and reconstruction)).

The update is written in two precisions, as the references compute it: `x0_from_eps` / `eps_from_x0` /
`ddim_step` on float64 scalars (guided-diffusion and LFDN keep their tables in float64), and `DDIMTable.step` on the
float32 table entries in diffusers' order of operations (CompVis' and diffusers' samplers). The two round
differently in the last bits; each path keeps its own, so its scores do not move. All steps are deterministic
(eta = 0) except LFDN's, whose noise term `ddim_step` leaves to the caller.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

EpsFn = Callable[[Tensor, int, Tensor], Tensor]  # (x, training timestep, class labels [B]) -> epsilon


def train_betas(schedule: str, beta_start: float, beta_end: float, num_train_timesteps: int) -> np.ndarray:
    """The training betas in float64, as guided-diffusion ("linear") and latent-diffusion ("scaled_linear":
    linspace of square roots, squared) compute them."""
    if schedule == "linear":
        return np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
    if schedule == "scaled_linear":
        return np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=np.float64) ** 2
    raise ValueError(f"beta_schedule must be 'linear' or 'scaled_linear', got {schedule!r}")


def alphas_cumprod_float32(schedule: str, beta_start: float, beta_end: float, num_train_timesteps: int) -> Tensor:
    """The alpha-bar table in float32, computed as diffusers' schedulers compute it (float32 betas, float32
    cumulative product), which is what CompVis' sampler and the training grids step with."""
    if schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif schedule == "scaled_linear":
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float32) ** 2
    else:
        raise ValueError(f"beta_schedule must be 'linear' or 'scaled_linear', got {schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0)


@dataclass(frozen=True)
class DDIMTable:
    """One DDIM sampler as data: row i is the i-th noise level of its sub-sequence, counted from the clean end.

    timesteps[i]: the training timestep the model is given; alpha_bar[i]: the noise level its epsilon is read at;
    alpha_bar_to[i]: the level the step moves to. An inversion table runs its rows upwards, a sampling table
    downwards. Tables of float64 entries feed `ddim_step`, tables of float32 entries `step`.
    """

    timesteps: tuple[int, ...]
    alpha_bar: Tensor
    alpha_bar_to: Tensor

    def __len__(self) -> int:
        return len(self.timesteps)

    def step(self, i: int, x: Tensor, eps: Tensor, clip: bool = False) -> Tensor:
        """Row i's move in diffusers' order of operations on the float32 entries (x0 clipped to [-1, 1] with
        `clip`, epsilon kept as predicted)."""
        a, a_to = self.alpha_bar[i], self.alpha_bar_to[i]
        x0 = (x - (1 - a) ** 0.5 * eps) / a ** 0.5
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        return a_to ** 0.5 * x0 + (1 - a_to) ** 0.5 * eps


def leading_tables(alphas_cumprod: Tensor, num_steps: int, steps_offset: int = 0,
                   first_alpha_bar: Tensor | float = 1.0) -> tuple[DDIMTable, DDIMTable]:
    """(inversion, sampling) tables on the evenly strided sub-sequence range(0, T, T // n) + steps_offset
    (diffusers' "leading" spacing; CompVis' DDIM sub-sequence).

    Both use the pairs of CompVis' sampler: the step at timestep t moves between alpha_bar[t - T/n] and
    alpha_bar[t], with `first_alpha_bar` for the clean end (1, or alpha_bar[0] as CompVis). So the inversion
    gives the model t, the level it moves to, while it reads epsilon at the level below.
    """
    num_train_timesteps = len(alphas_cumprod)
    if not 0 < num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
    stride = num_train_timesteps // num_steps
    timesteps = tuple(k * stride + steps_offset for k in range(num_steps))
    first = torch.as_tensor(first_alpha_bar, dtype=alphas_cumprod.dtype)
    lower = torch.stack([alphas_cumprod[t - stride] if t - stride >= 0 else first for t in timesteps])
    upper = torch.stack([alphas_cumprod[t] for t in timesteps])
    return DDIMTable(timesteps, lower, upper), DDIMTable(timesteps, upper, lower)


def x0_from_eps(x: Tensor, eps: Tensor, alpha_bar: float) -> Tensor:
    return (x - math.sqrt(1.0 - alpha_bar) * eps) / math.sqrt(alpha_bar)


def eps_from_x0(x: Tensor, x0: Tensor, alpha_bar: float) -> Tensor:
    return (x - math.sqrt(alpha_bar) * x0) / math.sqrt(1.0 - alpha_bar)


def ddim_step(x0: Tensor, eps: Tensor, alpha_bar_to: float, sigma: float = 0.0) -> Tensor:
    """The DDIM move to the noise level `alpha_bar_to` (float64 scalars), without its noise term: sigma > 0 (LFDN's
    eta) shortens the epsilon direction and the caller adds sigma * noise."""
    return math.sqrt(alpha_bar_to) * x0 + math.sqrt(max(1.0 - alpha_bar_to - sigma ** 2, 0.0)) * eps


def masked_guidance(eps_null: Tensor, eps_label: Tensor, scale: float, mask: Tensor | None) -> Tensor:
    """Classifier-free guidance eps_null + w (eps_label - eps_null) where `mask` is true (everywhere for None),
    eps_null elsewhere."""
    guided = eps_null + scale * (eps_label - eps_null)
    return guided if mask is None else torch.where(mask, guided, eps_null)


def ddim_invert(eps_fn: EpsFn, x: Tensor, table: DDIMTable, labels: Tensor) -> Tensor:
    """Deterministic DDIM inversion up every row of `table`, the model conditioned on `labels` [B] (the null
    class: no guidance)."""
    for i, t in enumerate(table.timesteps):
        x = table.step(i, x, eps_fn(x, t, labels))
    return x


def ddim_sample(eps_fn: EpsFn, x: Tensor, table: DDIMTable, labels: Tensor, null_class: int, scale: float,
                mask: Tensor | None = None, clip: bool = False) -> Tensor:
    """DDIM down every row of `table` with classifier-free guidance toward `labels` [B], inside `mask` only; each
    step is one model call on the batch [null-class rows, label rows]."""
    both = torch.cat([torch.full_like(labels, null_class), labels])
    for i in reversed(range(len(table))):
        eps_null, eps_label = eps_fn(torch.cat([x, x]), table.timesteps[i], both).chunk(2)
        x = table.step(i, x, masked_guidance(eps_null, eps_label, scale, mask), clip)
    return x
