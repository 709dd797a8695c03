"""Deterministic per-sample noise.

A sample's noise is drawn from its own CPU ``torch.Generator`` seeded by a stable hash of
(seed, stream, sample index), so scores do not depend on batch size, batch position, worker count,
number of GPUs or device type. ``stream`` names the dataset and the purpose, e.g.
``"cifar10/test/lfdn-last"``, so that two uses of the same sample get independent noise.

Images scored outside a benchmark (predict.py, load_detector, calibration) key their noise by their content instead
(`content_keys`, stream `CONTENT_STREAM`), so a score is a function of the image and the detector alone.
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


# The stream of every image scored outside a benchmark (predict.py, load_detector, calibration): with content keys,
# an image's noise is the same in any folder, position, batch or run.
CONTENT_STREAM = "images"


def content_keys(images: Tensor) -> Tensor:
    """int64 [B]: a 63-bit blake2b hash of each preprocessed image's float32 pixels and shape, the key of its noise
    when a score must depend on the image alone (not on its position in a dataset)."""
    rows = images.detach().to("cpu", torch.float32).contiguous()
    keys = [int.from_bytes(hashlib.blake2b(json.dumps(list(row.shape)).encode() + row.numpy().tobytes(),
                                           digest_size=8).digest(), "little") >> 1 for row in rows]
    return torch.tensor(keys, dtype=torch.int64)


def noise_keys(batch: dict) -> Tensor:
    """What a batch's per-sample noise is keyed by: its content keys when it has them (`"noise_key"`, set for images
    scored outside a benchmark), else the dataset indices (evaluate.py / train.py: (seed, set, index))."""
    return batch["noise_key"] if "noise_key" in batch else batch["index"]
