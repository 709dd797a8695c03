"""Deterministic per-sample noise.

A sample's noise is drawn from its own CPU ``torch.Generator`` seeded by a stable hash of
(seed, stream, sample index), so scores do not depend on batch size, batch position, worker count,
number of GPUs or device type. ``stream`` names the dataset and the purpose, e.g.
``"cifar10/test/lfdn-last"``, so that two uses of the same sample get independent noise.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch
from torch import Tensor


def sample_seed(seed: int, stream: str, index: int) -> int:
    """A 64-bit generator seed for one sample: blake2b over the JSON text of [seed, stream, index]."""
    if not isinstance(stream, str):
        raise TypeError(f"stream must be a str, got {type(stream).__name__}")
    key = json.dumps([int(seed), stream, int(index)]).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def sample_noise(
    shape_per_sample: tuple[int, ...],
    indices: Tensor | Sequence[int],
    *,
    seed: int,
    stream: str,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard-normal noise [B, *shape_per_sample], row b determined by (seed, stream, indices[b]) alone.

    Always drawn in float32 on the CPU (identical everywhere), then converted to ``dtype`` and moved to ``device``.
    """
    indices = torch.as_tensor(indices)
    if indices.is_floating_point() or indices.is_complex():
        raise TypeError(f"indices must be integers, got dtype {indices.dtype}")
    shape = tuple(int(n) for n in shape_per_sample)
    rows = [
        torch.randn(shape, generator=torch.Generator().manual_seed(sample_seed(seed, stream, i)))
        for i in indices.reshape(-1).tolist()
    ]
    out = torch.stack(rows) if rows else torch.empty((0, *shape))
    return out.to(device=device, dtype=dtype)


def sample_integers(high: int, indices: Tensor | Sequence[int], *, seed: int, stream: str, device=None) -> Tensor:
    """Integers in [0, high) as int64 [B], entry b determined by (seed, stream, indices[b]) alone (e.g. timesteps).

    The 64-bit sample seed modulo ``high``: uniform up to a bias below high / 2**64.
    """
    values = [sample_seed(seed, stream, i) % int(high) for i in torch.as_tensor(indices).reshape(-1).tolist()]
    return torch.tensor(values, dtype=torch.int64, device=device)
