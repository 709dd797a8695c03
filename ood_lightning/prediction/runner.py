"""Score a dataset of images with a detector through `trainer.predict` (DDP, precision, progress bar: Lightning's),
and calibrate a run's thresholds that way on its held-out in-distribution images."""
from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset

from ood_lightning.detectors.base import OODDetector
from ood_lightning.prediction.calibration import DEFAULT_TPR, HOW_TO_CALIBRATE, calibrate_scores, write_calibration
from ood_lightning.prediction.scoring import ImageScores


def score_images(trainer: L.Trainer, model: OODDetector, datamodule, images: Dataset,
                 ckpt_path: str | None = None, sheet: tuple[str, int] | None = None) -> dict:
    """Every image of `images` scored once (`OODDetector.predict_step`), on every process: ImageScores.result
    (with `sheet`, also the pictures of the images a contact sheet by that score shows)."""
    datamodule.predict_set = images
    collector = ImageScores(sheet)
    trainer.callbacks.append(collector)
    try:
        trainer.predict(model, datamodule=datamodule, ckpt_path=ckpt_path, return_predictions=False)
    finally:
        trainer.callbacks.remove(collector)
        datamodule.predict_set = None
    return collector.result


def calibrate_run(trainer: L.Trainer, model: OODDetector, datamodule, folder: str | Path, *,
                  tpr: float = DEFAULT_TPR, config_hash: str | None = None, ckpt_path: str | None = None,
                  required: bool = False) -> dict | None:
    """Thresholds at ID TPR `tpr` from the datamodule's calibration set (held-out ID train images), written to
    `folder`/calibration.json by rank 0. Without a calibration set: an error when `required`, else a notice."""
    datamodule.build_sets()
    images = datamodule.calibration_set
    if images is None:
        message = (f"no in-distribution train images are left out of training for calibration "
                   f"(benchmark {datamodule.benchmark_name!r}, train_subset {datamodule.hparams.train_subset}): "
                   f"no thresholds. {HOW_TO_CALIBRATE}")
        if required:
            raise RuntimeError(message)
        rank_zero_info(f"Calibration skipped: no in-distribution train image of {datamodule.benchmark_name!r} is left "
                       "out of training, so the run has scores but no thresholds (--calibration_size N holds N out; "
                       "docs/predict.md)")
        return None
    result = score_images(trainer, model, datamodule, images, ckpt_path=ckpt_path)
    calibration = calibrate_scores(
        result["scores"], tpr, n_id=int(len(result["index"])), n_skipped=int(len(result["skipped"])),
        seed=datamodule.hparams.data_seed, split="ID train images not fit on (OODDataModule.calibration_set)",
        config_hash=config_hash, checkpoint=ckpt_path, detector=type(model).__name__,
        noise="content-keyed (the scores predict.py and load_detector give)")
    if trainer.is_global_zero:
        path = write_calibration(folder, calibration)
        lines = [f"  {name}: threshold {entry['threshold']:.6g} (ID TPR {entry['tpr']:.4f} on these images)"
                 for name, entry in calibration["scores"].items()]
        print(f"Calibrated on {calibration['n_id']} held-out ID train images at target ID TPR {tpr}: {path}\n"
              + "\n".join(lines))
    return calibration
