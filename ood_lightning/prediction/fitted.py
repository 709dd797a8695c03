"""What a detector fits at test time (KNN's neighbour bank, ViM's statistics, pytorch-ood detectors' fits, a
fusion's thresholds), saved with the run so predict.py and load_detector can score without the benchmark.

Those statistics come from the benchmark's ID train split inside `trainer.test` and are in no checkpoint (a
zero-training detector has none). After a test the evaluation writes them to `fitted.pt` in the results folder
(atomically; `OODDetector.fitted_state`), keyed by a hash of what the fit depends on: the model config and the data
options that pick and preprocess the train split. predict.py and load_detector read it back with weights_only
(`load_checkpoint`) into `OODDetector.load_fitted_state`, and refuse a file whose key differs from their config's.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ood_lightning.detectors.base import OODDetector
from ood_lightning.io import atomic_write, load_checkpoint
from ood_lightning.report import config_hash

FITTED_FILE = "fitted.pt"
# The data options a fit depends on: which train images (and how they are preprocessed). Batch size, workers and
# the test / OOD sets do not change it.
FIT_DATA_OPTIONS = ("benchmark", "root", "image_size", "center_crop", "train_subset", "data_seed", "id_train",
                    "train")


class NotFittedError(RuntimeError):
    """A detector that fits on in-distribution data at test time has no saved fit to score with."""


def how_to_fit(config: str | Path | None = None) -> str:
    return (f"Its statistics are fitted on the benchmark's ID train split during evaluate.py's test and saved as "
            f"{FITTED_FILE} with the run: run\n  python evaluate.py --config {config or 'CONFIG'} --calibrate true\n"
            "first (it also writes calibration.json), then predict with --run on that run folder (or the folder "
            "holding fitted.pt and calibration.json).")


def fit_key(config: Mapping) -> str:
    """The hash a fitted state is keyed by: the resolved config's model section and its FIT_DATA_OPTIONS."""
    data = config.get("data") or {}
    return config_hash({"model": config.get("model"),
                        "fit_data": {option: data.get(option) for option in FIT_DATA_OPTIONS}})


def save_fitted(folder: str | Path, model: OODDetector, key: str) -> Path | None:
    """`model`'s fitted state as `folder`/fitted.pt (None written, None returned, when it fitted nothing)."""
    state = model.fitted_state()
    if state is None:
        return None
    path = Path(folder) / FITTED_FILE
    atomic_write(path, lambda f: torch.save({"fit_key": key, "detector": type(model).__name__, "state": state}, f))
    return path


def load_fitted(model: OODDetector, key: str, folders: list[str | Path | None],
                config: str | Path | None = None) -> Path | None:
    """Restore `model`'s fit from the first fitted.pt in `folders` (None entries skipped) when it needs one; returns
    the file read. NotFittedError, saying how to make one, when it needs one and none is there; ValueError when the
    file was fitted under another config."""
    if not model.needs_fit:
        return None
    found = next((Path(f) / FITTED_FILE for f in folders if f is not None and (Path(f) / FITTED_FILE).is_file()),
                 None)
    if found is None:
        where = ", ".join(str(f) for f in folders if f is not None) or "no run folder given"
        raise NotFittedError(f"{type(model).__name__} fits on in-distribution data, and no {FITTED_FILE} holds its "
                             f"fit (looked in: {where}). {how_to_fit(config)}")
    saved = load_checkpoint(found)
    if saved.get("fit_key") != key or saved.get("detector") != type(model).__name__:
        raise ValueError(f"{found} was fitted under another configuration ({saved.get('detector')}, key "
                         f"{saved.get('fit_key')}) than this one ({type(model).__name__}, key {key}): the model "
                         f"section or the train-split data options ({', '.join(FIT_DATA_OPTIONS)}) differ. Predict "
                         f"with the run's own config, or refit: {how_to_fit(config)}")
    model.load_fitted_state(saved["state"])
    return found
