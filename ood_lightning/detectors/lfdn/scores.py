"""LFDN OOD scores between the input feature vector z and its reconstruction z_hat (docs/lfdn.md (Scores)).

Both are "higher = more OOD". The LR score is the difference of two such scores (early minus last
checkpoint) and is formed by the caller.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F


def _as_float(z: Tensor, z_hat: Tensor) -> tuple[Tensor, Tensor]:
    if z.shape != z_hat.shape:
        raise ValueError(f"z and z_hat must have the same shape, got {tuple(z.shape)} and {tuple(z_hat.shape)}")
    dtype = torch.promote_types(torch.promote_types(z.dtype, z_hat.dtype), torch.float32)
    return z.flatten(1).to(dtype), z_hat.flatten(1).to(dtype)


def mse_score(z: Tensor, z_hat: Tensor) -> Tensor:
    """Sum over features of the squared error, [B] (the official code sums, it does not average)."""
    z, z_hat = _as_float(z, z_hat)
    return (z - z_hat).pow(2).sum(dim=1)


def mfsim_score(z: Tensor, z_hat: Tensor, group_sizes: Sequence[int], skip_first_group: bool = True) -> Tensor:
    """Minus the mean per-layer cosine similarity between z and z_hat, [B].

    ``group_sizes`` are the sizes of the layer slices in feature order (b4: [24, 32, 56, 160, 448]).
    The official code skips the first slice and averages over the other L-1 (``skip_first_group=True``);
    ``False`` averages over all L slices. Cosine similarity uses eps 1e-8 as ``F.cosine_similarity``.
    """
    z, z_hat = _as_float(z, z_hat)
    sizes = [int(n) for n in group_sizes]
    if sum(sizes) != z.shape[1] or any(n <= 0 for n in sizes):
        raise ValueError(f"group_sizes {sizes} must be positive and sum to the feature size {z.shape[1]}")
    pairs = list(zip(z.split(sizes, dim=1), z_hat.split(sizes, dim=1)))
    if skip_first_group:
        pairs = pairs[1:]
    if not pairs:
        raise ValueError("mfsim_score needs at least two groups when skip_first_group=True")
    cos = torch.stack([F.cosine_similarity(g_hat, g, dim=1, eps=1e-8) for g, g_hat in pairs], dim=1)
    return -cos.mean(dim=1)
