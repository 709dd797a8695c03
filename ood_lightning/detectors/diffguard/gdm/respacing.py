"""guided-diffusion's "ddimN" respacing: the step tables of DiffGuard's classifier-guided path.

The respacing keeps N evenly strided training timesteps {0, s, 2s, ...}; respaced index k is training timestep
k * s with alpha-bar[k * s] from the float64 training table. Row k of both tables is index k: inversion moves from
level k up to level k + 1 (to alpha-bar 0 past the last level, guided-diffusion's `alphas_cumprod_next[-1]`),
re-synthesis from level k down to level k - 1 (to alpha-bar 1, the clean image, below the first,
`alphas_cumprod_prev[0]`). See docs/diffguard.md (Classifier-guided path).
"""
from __future__ import annotations

import numpy as np
import torch

from ood_lightning.ddim import DDIMTable, train_betas


def respaced_tables(num_steps: int = 100, beta_schedule: str = "linear", beta_start: float = 1e-4,
                    beta_end: float = 0.02, num_train_timesteps: int = 1000) -> tuple[DDIMTable, DDIMTable]:
    """(inversion, re-synthesis) tables of the "ddim{num_steps}" respacing, float64 entries."""
    strides = [s for s in range(1, num_train_timesteps + 1) if len(range(0, num_train_timesteps, s)) == num_steps]
    if not strides:
        raise ValueError(f"cannot take {num_steps} evenly strided steps of {num_train_timesteps} timesteps")
    timesteps = tuple(range(0, num_train_timesteps, strides[0]))
    levels = np.cumprod(1.0 - train_betas(beta_schedule, beta_start, beta_end, num_train_timesteps))[list(timesteps)]
    alpha_bar = torch.from_numpy(levels)
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    inversion = DDIMTable(timesteps, alpha_bar, torch.cat([alpha_bar[1:], zero]))
    resynthesis = DDIMTable(timesteps, alpha_bar, torch.cat([one, alpha_bar[:-1]]))
    return inversion, resynthesis
