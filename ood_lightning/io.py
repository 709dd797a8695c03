"""Files in and out: safe checkpoint reading, the one strict state-dict check, atomic writes, file-name stems.

Reading. The one way this project reads a checkpoint is torch.load(weights_only=True), which never runs code from
the file.
A pickle can call any function while it loads, so a checkpoint found online could run anything. weights_only
allows tensors and plain containers only; `allow` adds the few harmless types an official file carries (the
released LFDN checkpoints hold an argparse.Namespace). Anything else is refused with an error naming the file.

Lightning reads the checkpoints of `--ckpt_path` (fit, test, resume; local paths and URLs) through its
CheckpointIO plugin, whose default unpickles remote files with weights_only=False; `SafeCheckpointIO` routes them
through `load_checkpoint` instead (the CLI installs it on every trainer).

Checking. Every weight file that goes into a model (backbones, classifiers, the official LFDN, ADM and CompVis
releases) passes `collect_state`: each tensor the model needs is looked up under its name in the file, checked
for shape (and optionally finiteness), and every problem is reported in one `StateDictMismatchError` that names
the keys, before anything is loaded.

Writing. Results, caches and exported checkpoints are written atomically (`atomic_write`: a temporary file beside
the target, then a rename), so an interrupted run never leaves half a file.
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import Tensor, nn

from ood_lightning.errors import StateDictMismatchError, UnsafeCheckpointError

__all__ = ["SafeCheckpointIO", "atomic_write", "atomic_write_text", "collect_state", "file_stem", "is_url",
           "load_checkpoint", "load_state_strict"]


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


# ------------------------------------------------------------------------------------------------ checking
def collect_state(
    state: Mapping[str, Any],
    wanted: Mapping[str, tuple[int, ...]],
    source: Callable[[str], str] = lambda key: key,
    *,
    source_shape: Callable[[str, tuple[int, ...]], tuple[int, ...]] = lambda key, shape: shape,
    take: Callable[[str, Tensor], Tensor] = lambda key, value: value,
    optional: Callable[[str], bool] = lambda key: False,
    finite: bool = False,
    foreign: Callable[[str], bool] = lambda key: True,
) -> tuple[dict[str, Tensor], list[str]]:
    """Pick the tensors a model needs out of a weight file's `state`, reporting every problem instead of the first.

    Args:
        state: the file's tensors by its own names.
        wanted: the model's keys and shapes (e.g. {k: tuple(v.shape) for k, v in module.state_dict().items()}).
        source: the file's name of a model key (a key remap; identity by default).
        source_shape: the shape the file stores a model key in (e.g. a 1x1 conv stored for a linear layer).
        take: turns the file's tensor into the model's (a reshape, a channel reorder); called on good tensors only.
        optional: model keys a file may lack (e.g. BatchNorm's num_batches_tracked counters); left out of the result.
        finite: refuse tensors holding NaN or infinity.
        foreign: which file keys not used by the model count as unexpected (e.g. only those under a prefix).
    Returns:
        (model key -> tensor, problems), one readable line per missing, wrongly shaped, non-finite or unexpected key.
    """
    out, problems, used = {}, [], set()
    for key, shape in wanted.items():
        name = source(key)
        used.add(name)
        if name not in state:
            if not optional(key):
                problems.append(f"missing {name}")
            continue
        value, expected = state[name], tuple(source_shape(key, tuple(shape)))
        if not isinstance(value, Tensor) or tuple(value.shape) != expected:
            found = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            problems.append(f"wrong shape for {name}: expected {expected}, got {found}")
        elif finite and value.is_floating_point() and not torch.isfinite(value).all():
            problems.append(f"non-finite values in {name}")
        else:
            out[key] = take(key, value)
    problems += [f"unexpected {name}" for name in sorted(state) if name not in used and foreign(name)]
    return out, problems


def raise_on_problems(problems: Sequence[str], what: str, hint: str = "") -> None:
    """One StateDictMismatchError naming the first problems of each kind (and how many there are), if any."""
    if not problems:
        return
    shown = "\n  ".join(problems[:12]) + (f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else "")
    raise StateDictMismatchError(f"{what} does not fit the model ({len(problems)} problem(s)){hint}:\n  {shown}")


def is_counter(key: str) -> bool:
    """BatchNorm's num_batches_tracked: absent from older files (torchvision's, the CIFAR ResNets'), used only by
    momentum-free BatchNorm training, so a file may lack it."""
    return key.endswith("num_batches_tracked")


def load_state_strict(module: nn.Module, state: Mapping[str, Any], what: str,
                      source: Callable[[str], str] = lambda key: key, **options) -> nn.Module:
    """Load `state` into `module` after `collect_state` found no problem (BatchNorm counters may be absent); a
    mismatch raises StateDictMismatchError listing every problem, and the module is left untouched."""
    target = module.state_dict()
    options.setdefault("optional", is_counter)
    tensors, problems = collect_state(state, {k: tuple(v.shape) for k, v in target.items()}, source, **options)
    raise_on_problems(problems, what)
    tensors.update({k: torch.zeros_like(v) for k, v in target.items() if k not in tensors})  # absent counters
    module.load_state_dict(tensors, strict=True)
    return module


# ------------------------------------------------------------------------------------------------- writing
def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Write through `write(file)` to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def file_stem(name: str) -> str:
    """A file-name-safe form of a set or score name (anything but letters, digits, '.', '_', '-' becomes '_')."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip(".")
    return stem or "_"
