"""The one way this project reads a checkpoint: torch.load(weights_only=True), which never runs code from the file.

A pickle can call any function while it loads, so a checkpoint found online could run anything. weights_only
allows tensors and plain containers only; `allow` adds the few harmless types an official file carries (the
released LFDN checkpoints hold an argparse.Namespace). Anything else is refused with an error naming the file.

Lightning reads the checkpoints of `--ckpt_path` (fit, test, resume; local paths and URLs) through its
CheckpointIO plugin, whose default unpickles remote files with weights_only=False; `SafeCheckpointIO` routes them
through `load_checkpoint` instead (the CLI installs it on every trainer).
"""
from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ood_lightning.errors import UnsafeCheckpointError


def is_url(path: str | os.PathLike) -> bool:
    return str(path).startswith(("http://", "https://"))


def load_checkpoint(path: str | os.PathLike, *, allow: Sequence[type] = ()) -> Any:
    """Read a torch checkpoint on the CPU (memory-mapped where the format allows) without executing its pickle.

    A URL (http/https) is downloaded to a temporary file first and read the same way."""
    if is_url(path):
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / "checkpoint"
            torch.hub.download_url_to_file(str(path), str(local), progress=False)
            return _load_local(local, allow, shown_as=str(path), mmap=False)  # the file goes with the folder
    return _load_local(path, allow, shown_as=str(path), mmap=True)


def _load_local(path: str | os.PathLike, allow: Sequence[type], shown_as: str, mmap: bool) -> Any:
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {shown_as}")
    with torch.serialization.safe_globals(list(allow)):
        try:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
                if "mmap" not in str(e):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            lines = [line.strip() for line in str(e).splitlines()]
            detail = next((line for line in lines if "unsupported global" in line.lower()), "an unsupported object")
            allowed = ", ".join(["tensors", "containers", *(t.__qualname__ for t in allow)])
            raise UnsafeCheckpointError(
                f"refusing to load {shown_as}: it needs Python objects other than {allowed}, which could run code "
                f"while loading ({detail}). Nothing from it was run. Use a checkpoint saved by this project or "
                "the weight file's official release; if you wrote this file yourself, save only its state_dict."
            ) from None


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader for --ckpt_path, through `load_checkpoint` (weights_only, whatever the caller
    asks); writing stays Lightning's."""

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return load_checkpoint(path)
