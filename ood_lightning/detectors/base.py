"""The one interface every detector implements, and the evaluation loop they share.

A detector is a LightningModule that turns a test batch into named per-sample OOD scores (higher = more
OOD). Everything after that - gathering scores across processes, de-duplicating by dataset index, metrics,
results files, plots, W&B - lives here and in report.py, so detectors know no benchmark and the evaluator
knows no detector.
"""
from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from ood_lightning.metrics import ScoreCollector
from ood_lightning.report import build_results, config_hash, print_results, write_results
from ood_lightning.run_folder import run_folder
from ood_lightning.wandb_logging import log_image_grid, log_results_to_wandb


class OODDetector(L.LightningModule):
    """Base class: subclasses define `score_names` and `score(batch, dataset)`.

    `extra_names` optionally lists per-sample values that `score` returns besides the scores (e.g. a classifier's
    "prediction"); they are saved in scores/<set>.npz as extra_<name> but get no metrics. Labels (batch["label"])
    are saved there too.

    Args:
        results_dir: where results files go; default: the run folder of the trainer's first logger
            (runs/<name>/lightning_logs/version_N for the CSV/TensorBoard loggers, <save_dir>/<project>/<run id>
            for a first WandbLogger, as its checkpoints), or the trainer's default_root_dir without loggers.
    """

    score_names: tuple[str, ...] = ()
    extra_names: tuple[str, ...] = ()

    def __init__(self, results_dir: str | None = None):
        super().__init__()
        self.results_dir = results_dir
        self.collectors = torch.nn.ModuleDict()
        self.results: dict | None = None
        # The resolved run config (model, data, trainer sections of config.yaml); cli.py sets it. Without it the
        # config hash is taken over this detector's and the datamodule's hyperparameters.
        self.run_config: dict | None = None
        self.write_plots = True  # cli.py: --plots

    def score(self, batch: dict, dataset: str) -> dict[str, Tensor]:
        """Per-sample OOD scores of a batch from test set `dataset`: one [B] tensor per name in score_names
        (plus one per name in extra_names, if any)."""
        raise NotImplementedError

    def log_images(self, name: str, images: Tensor, caption: str | None = None, nrow: int = 8) -> None:
        """Log images [N, C, H, W] in [0, 1] as one grid to the W&B / TensorBoard loggers (rank 0 only; no-op
        for other loggers). The hook for detectors with pictures to show, e.g. DiffGuard's input vs synthesis."""
        if self.trainer.is_global_zero:
            log_image_grid(self.loggers, name, images, caption=caption, nrow=nrow, step=self.global_step)

    # -- evaluation loop -------------------------------------------------------------------------------
    @property
    def test_set_names(self) -> list[str]:
        return list(self.trainer.datamodule.test_sets)

    def on_test_start(self) -> None:
        self.collectors = torch.nn.ModuleDict(
            {name: ScoreCollector(self.score_names, with_labels=True, extra_names=self.extra_names)
             for name in self.test_set_names}
        ).to(self.device)
        self._test_start_time = time.perf_counter()

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self.test_set_names[dataloader_idx]
        collector = self.collectors[name]
        if batch["skipped"].numel():
            collector.add_skipped(batch["skipped"])
        if batch["index"].numel():
            out = self.score(batch, name)
            extras = {key: out[key] for key in self.extra_names if key in out}
            scores = {key: value for key, value in out.items() if key not in extras}
            labels = batch.get("label")
            collector.update(scores, batch["index"], labels=labels if isinstance(labels, Tensor) else None,
                             extras=extras)

    def record_skipped(self, dataset: str, index: Tensor) -> None:
        """For detectors that read their inputs elsewhere (e.g. a feature cache) and saw unreadable samples."""
        if index.numel():
            self.collectors[dataset].add_skipped(index.to(self.device))

    def on_test_epoch_end(self) -> None:
        # Every rank: compute() gathers the collectors across processes, and the run folder may need a broadcast.
        per_set = {name: collector.compute() for name, collector in self.collectors.items()}
        dm = self.trainer.datamodule
        self.results = build_results(
            per_set,
            benchmark=dm.benchmark_name,
            detector=type(self).__name__,
            groups=dm.groups,
            wall_time=time.perf_counter() - self._test_start_time,
            extra={
                "config_hash": config_hash(self.run_config or self._own_config()),
                "checkpoint": self.trainer.ckpt_path,
                "world_size": self.trainer.world_size,
            },
        )
        # Every rank holds the same values (computed from the gathered scores): a "max" sync keeps them exact.
        for key, value in _flat_metrics(self.results).items():
            self.log(key, value, sync_dist=True, reduce_fx="max")
        out = self.output_dir()
        if self.trainer.is_global_zero:
            plots = write_results(out, self.results, per_set, plots=self.write_plots)
            print_results(self.results, out)
            log_results_to_wandb(self.loggers, self.results, per_set, plots, step=self.global_step)

    def output_dir(self) -> Path:
        """The results folder (see `results_dir`): the run folder of checkpoints and config.yaml by default. Call on
        every rank: rank 0's folder is broadcast."""
        if self.results_dir:
            return Path(self.results_dir)
        return Path(self.trainer.strategy.broadcast(str(run_folder(self.trainer))))

    def _own_config(self) -> dict:
        """What identifies the run without cli.py: the detector's class and hparams, the datamodule's hparams."""
        dm = self.trainer.datamodule
        return {
            "model": {"class_path": f"{type(self).__module__}.{type(self).__qualname__}",
                      "init_args": dict(self.hparams)},
            "data": dict(getattr(dm, "hparams", {})),
        }


def _flat_metrics(results: dict) -> dict[str, float]:
    """`test/<ood set>/<score>/<metric>` for the loggers; a set with no scored image has no metrics (None) to log."""
    flat = {}
    for score, sets in results["scores"].items():
        for ood_set, metrics in sets.items():
            for metric, value in metrics.items():
                if not metric.startswith("n_") and value is not None:
                    flat[f"test/{ood_set}/{score}/{metric}"] = value
    return flat
