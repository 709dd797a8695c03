"""The one interface every detector implements, and the evaluation loop they share.

A detector is a LightningModule that turns a test batch into named per-sample OOD scores (higher = more
OOD). Everything after that - gathering scores across processes, de-duplicating by dataset index, metrics,
results files - lives here, so detectors know no benchmark and the evaluator knows no detector.
"""
from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from ood_lightning.metrics import ScoreCollector
from ood_lightning.report import build_results, print_results, write_results


class OODDetector(L.LightningModule):
    """Base class: subclasses define `score_names` and `score(batch, dataset)`.

    Args:
        results_dir: where results files go; default: the trainer's log directory.
    """

    score_names: tuple[str, ...] = ()

    def __init__(self, results_dir: str | None = None):
        super().__init__()
        self.results_dir = results_dir
        self.collectors = torch.nn.ModuleDict()
        self.results: dict | None = None

    def score(self, batch: dict, dataset: str) -> dict[str, Tensor]:
        """Per-sample OOD scores of a batch from test set `dataset`, one [B] tensor per name in score_names."""
        raise NotImplementedError

    # -- evaluation loop -------------------------------------------------------------------------------
    @property
    def test_set_names(self) -> list[str]:
        return list(self.trainer.datamodule.test_sets)

    def on_test_start(self) -> None:
        self.collectors = torch.nn.ModuleDict(
            {name: ScoreCollector(self.score_names) for name in self.test_set_names}
        ).to(self.device)
        self._test_start_time = time.perf_counter()

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self.test_set_names[dataloader_idx]
        collector = self.collectors[name]
        if batch["skipped"].numel():
            collector.add_skipped(batch["skipped"])
        if batch["index"].numel():
            collector.update(self.score(batch, name), batch["index"])

    def record_skipped(self, dataset: str, index: Tensor) -> None:
        """For detectors that read their inputs elsewhere (e.g. a feature cache) and saw unreadable samples."""
        if index.numel():
            self.collectors[dataset].add_skipped(index.to(self.device))

    def on_test_epoch_end(self) -> None:
        per_set = {name: collector.compute() for name, collector in self.collectors.items()}
        dm = self.trainer.datamodule
        self.results = build_results(
            per_set,
            benchmark=dm.benchmark_name,
            detector=type(self).__name__,
            groups=dm.groups,
            wall_time=time.perf_counter() - self._test_start_time,
        )
        for key, value in _flat_metrics(self.results).items():
            self.log(key, value, sync_dist=False)
        if self.trainer.is_global_zero:
            out = Path(self.results_dir or self.trainer.log_dir or ".")
            write_results(out, self.results, per_set)
            print_results(self.results, out)


def _flat_metrics(results: dict) -> dict[str, float]:
    """`test/<ood set>/<score>/<metric>` for the loggers."""
    flat = {}
    for score, sets in results["scores"].items():
        for ood_set, metrics in sets.items():
            for metric, value in metrics.items():
                if not metric.startswith("n_"):
                    flat[f"test/{ood_set}/{score}/{metric}"] = value
    return flat

