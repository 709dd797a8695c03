"""The one interface every detector implements: turn a batch into named per-sample OOD scores (higher = more OOD).

A detector knows no benchmark and writes no file. It declares what it reads from a batch (`inputs`: images and/or
cached frozen-backbone features, which the DataModule serves), may need fitting on in-distribution data first
(`needs_fit` / `fit`; what it fitted travels with the run as `fitted_state`), and returns its scores from
`test_step`; the evaluation (ood_lightning/evaluation.py, attached by train.py / evaluate.py) collects them, computes
the metrics and writes the results. Pictures a detector wants
shown go to the evaluation through `show`; entries of its own for results.json through `results_extra`.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ood_lightning.data.feature_cache import BatchInputs
from ood_lightning.noise import CONTENT_STREAM, content_keys


class OODDetector(L.LightningModule):
    """Base class: subclasses define `score_names` and `score(batch, dataset)`.

    `extra_names` optionally lists per-sample values that `score` returns besides the scores (e.g. a classifier's
    "prediction"); the evaluation saves them in scores/<set>.npz as extra_<name> but computes no metrics on them.
    `hparams` are always the detector's own init arguments (see `save_hyperparameters`).
    """

    score_names: tuple[str, ...] = ()
    extra_names: tuple[str, ...] = ()

    def __init__(self):
        super().__init__()
        self.shown: list[tuple[str, Tensor, str | None]] = []
        # Per-sample pictures of the last scored batch, {row name: [B, 3, H, W] in [0, 1]} (DiffGuard's synthesis),
        # which predict.py's contact sheet shows beside each image; empty for detectors that make none.
        self.pictures: dict[str, Tensor] = {}

    @property
    def inputs(self) -> BatchInputs:
        """What `score` reads from a batch; the DataModule serves it. Default: the images."""
        return BatchInputs(images=True)

    @property
    def needs_fit(self) -> bool:
        """Whether `score` needs statistics of in-distribution data that this detector does not hold yet: fitted by
        `fit` (or at setup("test")), or restored by `load_fitted_state`. Default: nothing to fit."""
        return False

    def fit(self, train_set: Dataset, make_loader: Callable[[Dataset], DataLoader],
            device: torch.device | str = "cpu", progress: bool = True) -> None:
        """Fit whatever `score` needs on the in-distribution `train_set` (served with this detector's `inputs`),
        reading it through `make_loader`. Default: nothing to fit."""

    @property
    def fit_targets(self) -> str:
        """What `fit` still has to fit, in words, for the error when a benchmark has no train split to fit it on."""
        return "its in-distribution statistics"

    def setup(self, stage: str) -> None:
        """Before a test, fit what `score` still needs on the benchmark's ID train split (nothing when `needs_fit`
        is False: nothing to fit, or restored by `load_fitted_state`)."""
        if stage != "test" or not self.needs_fit:
            return
        dm = self.trainer.datamodule
        if dm.train_set is None:
            raise RuntimeError(f"{type(self).__name__} fits {self.fit_targets} on the ID train split, but benchmark "
                               f"{dm.benchmark_name!r} has none here (data.train false, or folders without id_train)")
        self.fit(dm.served(dm.train_set, "train"), dm.loader, self.trainer.strategy.root_device,
                 progress=self.trainer.is_global_zero)

    def fitted_state(self) -> dict | None:
        """What fitting computed (tensors, numbers, strings, containers of them: what torch.load(weights_only=True)
        reads), for predict.py and load_detector, which have no benchmark to fit on (prediction/fitted.py saves it
        with the run); None when nothing was fitted. Default: None (a detector that fits nothing)."""
        return None

    def load_fitted_state(self, state: dict) -> None:
        """Restore what `fitted_state` returned, so `score` needs no in-distribution data."""
        raise NotImplementedError(f"{type(self).__name__} fits nothing, so it has no fitted state to load")

    def score(self, batch: dict, dataset: str) -> dict[str, Tensor]:
        """Per-sample OOD scores of a batch from test set `dataset`: one [B] tensor per name in score_names
        (plus one per name in extra_names, if any)."""
        raise NotImplementedError

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor] | None:
        """The scores (and extras) of the batch's readable samples, for the evaluation; None when it has none."""
        if not batch["index"].numel():
            return None
        return self.score(batch, list(self.trainer.datamodule.test_sets)[dataloader_idx])

    def score_images(self, batch: dict) -> dict[str, Tensor]:
        """Scores (and extras) of a batch of images outside any benchmark (predict.py, load_detector, calibration):
        the features the detector reads are computed here from the images, and its noise is keyed by each image's
        content, so the score depends on the image and the detector alone (not on its folder, position or batch)."""
        batch = {**batch, "noise_key": content_keys(batch["image"]).to(batch["image"].device)}
        for feature in self.inputs.features:
            if feature.key not in batch:
                batch[feature.key] = feature.extractor(batch["image"]).float()
        return self.score(batch, CONTENT_STREAM)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor] | None:
        """`score_images` of the batch's readable images (prediction/scoring.py collects them); None when none."""
        if not batch["index"].numel():
            return None
        return self.score_images(batch)

    def export_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The part of `state` (this detector's state_dict) a compact export keeps: what scoring reads. Default: all."""
        return state

    def import_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """An exported state made whole again for load_state_dict (the inverse of `export_state`). Default: as is."""
        return state

    def show(self, name: str, grid: Tensor, caption: str | None = None) -> None:
        """Hand a picture (an image grid [3, H, W] in [0, 1], e.g. DiffGuard's input / synthesis rows) to the
        evaluation, which writes it to grids/<name>.png and logs it to the image loggers."""
        self.shown.append((name, grid.detach().float().cpu(), caption))

    def results_extra(self, per_set: dict[str, dict]) -> dict:
        """Entries of this detector's own for results.json (e.g. a fusion's thresholds), given the collected
        per-set scores; written with everything else. Default: none."""
        return {}

    def save_hyperparameters(self, *args, ignore: list[str] | str | None = None, frame=None,
                             logger: bool = True) -> None:
        """Lightning's, but always from the calling `__init__`s' own arguments. LightningCLI otherwise hands the
        whole model config to every module it builds: the detectors nested in a CascadeFusion would save the
        fusion's config instead of their own init args."""
        frame = frame or inspect.currentframe().f_back
        ignore = [ignore] if isinstance(ignore, str) else list(ignore or [])
        own = {name: value for name, value in _init_arguments(self, frame).items() if name not in ignore}
        if args:
            own = {name: own[name] for name in args}
        super().save_hyperparameters(own, logger=logger)


def _init_arguments(module: OODDetector, frame) -> dict:
    """The named arguments of the chain of `__init__` calls on `module` that `frame` is part of (from the base class's
    up to the most derived class's, whose value wins where two name the same argument)."""
    found: dict = {}
    while frame is not None and frame.f_code.co_name == "__init__" and frame.f_locals.get("self") is module:
        code = frame.f_code
        names = code.co_varnames[1:code.co_argcount + code.co_kwonlyargcount]
        found = {**found, **{name: frame.f_locals[name] for name in names if name in frame.f_locals}}
        frame = frame.f_back
    return found
