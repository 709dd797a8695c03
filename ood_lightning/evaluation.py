"""The evaluation every detector shares, as a Lightning Callback that train.py / evaluate.py attach (cli.py adds it).

From the scores a detector's `test_step` returns it does everything after scoring: per-set collection with the
dataset indices (so DDP's padded shards count each sample once), skipped-image counts, the metric table, results
files (report.py), plots, W&B, the metrics logged to every logger, the console table, and the pictures detectors
hand over through `OODDetector.show`, and what a detector fitted at test time (`OODDetector.fitted_state`, as
fitted.pt, for predict.py). Detectors know no file; this knows no detector.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
from torch import Tensor
from torchvision.utils import save_image

from ood_lightning.detectors.base import OODDetector
from ood_lightning.data.presets import ID_SET
from ood_lightning.io import atomic_write, atomic_write_text, file_stem
from ood_lightning.metrics import ScoreCollector
from ood_lightning.prediction.calibration import CALIBRATION_FILE, calibrated_rates, read_calibration
from ood_lightning.prediction.fitted import fit_key, save_fitted
from ood_lightning.report import build_results, config_hash, print_calibrated, print_results, write_results
from ood_lightning.run_folder import run_folder
from ood_lightning.wandb_logging import log_image_grid, log_results_to_wandb

GRIDS_DIR = "grids"


class Evaluation(L.Callback):
    """Collects a detector's test scores per test set and writes the results when testing ends.

    Args:
        results_dir: where results files go; default: the run folder of the trainer's first logger
            (runs/<name>/lightning_logs/version_N for the CSV/TensorBoard loggers, <save_dir>/<project>/<run id>
            for a first WandbLogger, as its checkpoints), or the trainer's default_root_dir without loggers.
        plots: write score histograms and ROC curves (plots/*.png) beside the results.
        run_config: the resolved run config (model, data, trainer sections of config.yaml) that results.json's
            config_hash is taken over; without it, the detector's and the datamodule's hyperparameters.
        calibration: calibration.json (file or folder) whose thresholds the results report on (achieved ID TPR,
            each OOD set's detection rate); default: the one in the results folder or in the checkpoint's run folder.

    After testing, `results` holds what results.json holds.
    """

    def __init__(self, results_dir: str | Path | None = None, plots: bool = True, run_config: dict | None = None,
                 calibration: str | Path | None = None):
        self.results_dir = results_dir
        self.plots = plots
        self.run_config = run_config
        self.calibration = calibration
        self.results: dict | None = None
        self.per_set: dict[str, dict] = {}
        self.calibration_follows = False  # evaluate.py --calibrate: thresholds come after the test
        self.collectors: dict[str, ScoreCollector] = {}  # per test set, from on_test_start
        self.set_names: list[str] = []
        self.folder: Path | None = None

    def output_dir(self, trainer: L.Trainer) -> Path:
        """The results folder (see `results_dir`). Call on every rank: rank 0's run folder is broadcast."""
        if self.results_dir:
            return Path(self.results_dir)
        return Path(trainer.strategy.broadcast(str(run_folder(trainer))))

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.set_names = list(trainer.datamodule.test_sets)
        self.collectors = {
            name: ScoreCollector(pl_module.score_names, with_labels=True, extra_names=pl_module.extra_names)
            .to(pl_module.device) for name in self.set_names}
        for name, dataset in trainer.datamodule.test_sets.items():
            unreadable = getattr(dataset, "skipped", None)  # items a dataset left out (e.g. the feature cache's)
            if unreadable is not None and len(unreadable):
                self.collectors[name].add_skipped(unreadable)
        self.folder = self.output_dir(trainer)
        self.start_time = time.perf_counter()

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: dict[str, Tensor] | None,
                          batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        collector = self.collectors[self.set_names[dataloader_idx]]
        if batch["skipped"].numel():
            collector.add_skipped(batch["skipped"])
        if outputs:
            extras = {key: outputs[key] for key in pl_module.extra_names if key in outputs}
            scores = {key: value for key, value in outputs.items() if key not in extras}
            labels = batch.get("label")
            collector.update(scores, batch["index"], labels=labels if isinstance(labels, Tensor) else None,
                             extras=extras)
        self._write_shown(trainer, pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Every rank: compute() gathers the collectors across processes.
        per_set = {name: collector.compute() for name, collector in self.collectors.items()}
        dm = trainer.datamodule
        for name, data in per_set.items():
            data["paths"] = dm.test_paths(name, data["index"]) if hasattr(dm, "test_paths") else None
        results = build_results(
            per_set,
            benchmark=dm.benchmark_name,
            detector=type(pl_module).__name__,
            groups=dm.groups,
            wall_time=time.perf_counter() - self.start_time,
            extra={
                "config_hash": config_hash(self.run_config or _own_config(pl_module, dm)),
                "checkpoint": trainer.ckpt_path,
                "world_size": trainer.world_size,
            },
        )
        results.update(pl_module.results_extra(per_set))  # before anything is written, so every file agrees
        calibration_file = self._calibration_file(trainer)
        if calibration_file is not None:
            results["calibrated"] = calibrated_block(calibration_file, per_set)
        self.results, self.per_set = results, per_set
        # Every rank holds the same values (computed from the gathered scores): a "max" sync keeps them exact.
        for key, value in _flat_metrics(results).items():
            pl_module.log(key, value, sync_dist=True, reduce_fx="max")
        if trainer.is_global_zero:
            plots = write_results(self.folder, results, per_set, plots=self.plots)
            fitted = save_fitted(self.folder, pl_module, fit_key(self.run_config or _own_config(pl_module, dm)))
            print_results(results, self.folder)
            if fitted is not None:
                print(f"What {type(pl_module).__name__} fitted on the ID train split: {fitted} (predict.py reads it)")
            print_calibrated(results)
            if calibration_file is None and not self.calibration_follows:
                print(f"No {CALIBRATION_FILE} for this run: scores without decisions. "
                      "python evaluate.py ... --calibrate true sets thresholds (docs/predict.md).")
            log_results_to_wandb(trainer.loggers, results, per_set, plots, step=pl_module.global_step)

    def _calibration_file(self, trainer: L.Trainer) -> Path | None:
        """`calibration`, else calibration.json in the results folder or the checkpoint's run folder, else None."""
        if self.calibration is not None:
            path = Path(self.calibration)
            return path / CALIBRATION_FILE if path.is_dir() else path
        folders = [self.folder]
        if trainer.ckpt_path and Path(trainer.ckpt_path).is_file():
            folders.append(Path(trainer.ckpt_path).resolve().parent.parent)  # <run>/checkpoints/<file>.ckpt
        return next((f / CALIBRATION_FILE for f in folders if (f / CALIBRATION_FILE).is_file()), None)

    def add_calibration(self, trainer: L.Trainer, calibration_file: str | Path) -> None:
        """After a test, report on thresholds calibrated since (evaluate.py --calibrate): results.json gains its
        "calibrated" block and the console the rates."""
        self.results["calibrated"] = calibrated_block(Path(calibration_file), self.per_set)
        if trainer.is_global_zero:
            atomic_write_text(self.folder / "results.json", json.dumps(self.results, indent=2) + "\n")
            print_calibrated(self.results)

    def _write_shown(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The pictures the detector (or a detector inside it) handed over with `show`: grids/<name>.png and the
        image loggers, from rank 0."""
        for module in pl_module.modules():
            if not isinstance(module, OODDetector):
                continue
            shown, module.shown = module.shown, []
            if not trainer.is_global_zero:
                continue
            for name, grid, caption in shown:
                atomic_write(self.folder / GRIDS_DIR / f"{file_stem(name)}.png",
                             lambda f, g=grid: save_image(g, f, format="png"))
                log_image_grid(trainer.loggers, f"{GRIDS_DIR}/{name}", grid[None], caption=caption, nrow=1,
                               step=pl_module.global_step)


def calibrated_block(calibration_file: Path, per_set: dict[str, dict]) -> dict:
    """results.json's "calibrated": the file, its target TPR and per score type the threshold, the ID test set's
    achieved TPR and each OOD set's detection rate."""
    calibration = read_calibration(calibration_file)
    return {"file": str(calibration_file), "target_tpr": calibration["target_tpr"],
            "scores": calibrated_rates(calibration, per_set, ID_SET)}


def _own_config(pl_module: L.LightningModule, datamodule: L.LightningDataModule) -> dict:
    """What identifies a run built without cli.py: the detector's class and hparams, the datamodule's hparams."""
    return {
        "model": {"class_path": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
                  "init_args": dict(pl_module.hparams)},
        "data": dict(getattr(datamodule, "hparams", {})),
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
