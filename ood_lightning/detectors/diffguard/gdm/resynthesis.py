"""Deterministic DDIM re-synthesis (eta = 0) from per-sample start indices, optionally classifier-guided.

Each step at respaced index k, as guided-diffusion's `ddim_sample` with `clip_denoised`:
  1. one model call gives epsilon; x0 = clip(x0_from_eps) and epsilon is re-derived from the clipped x0;
  2. guidance (if any) g is computed from x_t and the unclipped x0, and eps_hat = eps - sqrt(1 - a_k) g;
     x0 is re-derived from eps_hat without clipping (rows with g = 0 keep the clipped x0);
  3. the DDIM move to level k - 1 (alpha-bar 1 below index 0: the last step lands on the image).
Samples start at their own index `start[b]` and all count down together, so at index k only the samples with
start >= k are evaluated: the batch is masked step by step instead of being split into batches of one.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ood_lightning.ddim import DDIMTable, ddim_step, eps_from_x0, x0_from_eps

from .guidance import guided_eps
from .inversion import RespacedEpsFn

# (x_t of the rows, unclipped x0 of the rows, alpha-bar, row indices, guided steps taken so far per row) -> g
GuideFn = Callable[[Tensor, Tensor, float, Tensor, Tensor], Tensor]


def resynthesize(eps_fn: RespacedEpsFn, latent: Tensor, start: Tensor, table: DDIMTable,
                 guide: GuideFn | None = None, clip: bool = True) -> Tensor:
    """Denoise latents [B, C, H, W] from respaced indices start [B] down the re-synthesis `table` to the image."""
    if len(start) and (int(start.min()) < 0 or int(start.max()) >= len(table)):
        raise ValueError(f"start indices must lie in [0, {len(table) - 1}], got {start.tolist()}")
    x = latent.clone()
    top = int(start.max()) if len(start) else -1
    for k in range(top, -1, -1):
        rows = (start >= k).nonzero().squeeze(1)
        x_k = x[rows]
        a = float(table.alpha_bar[k])
        eps = eps_fn(x_k, k, rows)
        x0_raw = x0_from_eps(x_k, eps, a)
        x0 = x0_raw
        if clip:
            x0 = x0_raw.clamp(-1.0, 1.0)
            eps = eps_from_x0(x_k, x0, a)
        if guide is not None:
            eps = guided_eps(eps, guide(x_k, x0_raw, a, rows, start[rows] - k), a)
            x0 = x0_from_eps(x_k, eps, a)
        x[rows] = ddim_step(x0, eps, float(table.alpha_bar_to[k]))
    return x
