"""The one way this project reads a checkpoint: torch.load(weights_only=True), which never runs code from the file.

A pickle can call any function while it loads, so a checkpoint found online could run anything. weights_only
allows tensors and plain containers only; `allow` adds the few harmless types an official file carries (the
released LFDN checkpoints hold an argparse.Namespace). Anything else is refused with an error naming the file.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from typing import Any

import torch


def load_checkpoint(path: str | os.PathLike, *, allow: Sequence[type] = ()) -> Any:
    """Read a torch checkpoint on the CPU (memory-mapped where the format allows) without executing its pickle."""
    with torch.serialization.safe_globals(list(allow)):
        try:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
                if "mmap" not in str(e):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            detail = next((line.strip() for line in str(e).splitlines() if "Unsupported global" in line), str(e))
            allowed = ", ".join(["tensors", "containers", *(t.__qualname__ for t in allow)])
            raise ValueError(
                f"refusing to load {path}: it needs Python objects other than {allowed}, which could run code "
                f"while loading ({detail}). Do not work around this with weights_only=False on a file you do not "
                "trust."
            ) from e
