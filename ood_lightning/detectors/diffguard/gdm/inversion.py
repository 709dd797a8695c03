"""DDIM inversion with DiffGuard's clipped-x0 trick and per-sample adaptive early stop (paper section 3.2.1).

The image is pushed up the respaced schedule one step at a time: at index i the model predicts epsilon at the
current level, x0 is estimated and clipped to [-1, 1], epsilon is re-derived from the clipped x0 (which keeps
the trajectory close to the input), and the DDIM move goes to level i + 1. As in the reference, step 0 treats
the clean input as sitting at alpha-bar(0) and does not clip. After every step the stop rule compares the new
latent with the input; a sample that trips it is frozen there, with stop index i. Samples never stopped end at
level `max_steps` with stop index `max_steps - 1`. Only the samples still moving are sent through the model, so
a batch costs what its samples would cost one by one.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ood_lightning.ddim import DDIMTable, ddim_step, eps_from_x0, x0_from_eps

RespacedEpsFn = Callable[[Tensor, int, Tensor], Tensor]  # (x of the rows, respaced index, row indices) -> epsilon
StopFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # (latents, inputs, row indices) -> bool: stop these rows


def invert(eps_fn: RespacedEpsFn, x: Tensor, table: DDIMTable, max_steps: int, stop_fn: StopFn | None = None,
           clip: bool = True) -> tuple[Tensor, Tensor]:
    """Invert images x ([B, C, H, W] in [-1, 1]) up the rows of the inversion `table` for at most `max_steps`.

    Returns the latents [B, C, H, W] (sample b at level stop[b] + 1) and the stop indices [B] (int64).
    """
    if not 0 < max_steps <= len(table):
        raise ValueError(f"max_steps must be in [1, {len(table)}], got {max_steps}")
    latent = x.clone()
    stop = torch.full((len(x),), max_steps - 1, dtype=torch.int64, device=x.device)
    moving = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for i in range(max_steps):
        rows = moving.nonzero().squeeze(1)
        if not len(rows):
            break
        x_i = latent[rows]
        eps = eps_fn(x_i, i, rows)
        a = float(table.alpha_bar[i])
        x0 = x0_from_eps(x_i, eps, a)
        if clip and i > 0:
            x0 = x0.clamp(-1.0, 1.0)
            eps = eps_from_x0(x_i, x0, a)
        latent[rows] = x_next = ddim_step(x0, eps, float(table.alpha_bar_to[i]))
        if stop_fn is not None and i < max_steps - 1:
            stopped = rows[stop_fn(x_next, x[rows], rows)]
            stop[stopped] = i
            moving[stopped] = False
    return latent, stop
