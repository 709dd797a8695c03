"""The Python API: `load_detector(run folder or export)` gives a detector that scores and judges images.

    from ood_lightning import load_detector
    det = load_detector("runs/lfdn_cifar10_jpeg/lightning_logs/version_0", device="cuda")
    scores = det.score(["a.jpg", "b.png"])     # {score type: float64 [N]}, NaN where a file cannot be read
    flagged = det.predict(["a.jpg", "b.png"])  # {score type: bool [N]} at the calibrated thresholds

Images are paths, PIL images or a tensor batch [N, 3, H, W] in [0, 1] (taken as already preprocessed); paths and
PIL images get the preprocessing the detector was trained with (the run's data section). Scoring is batched and
the noise is keyed by each image's pixels, so the numbers equal predict.py's for the same images.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ood_lightning.console import quiet_console
from ood_lightning.data.datamodule import collate
from ood_lightning.detectors.base import OODDetector
from ood_lightning.prediction.calibration import (HOW_TO_CALIBRATE, NoCalibrationError, decisions,
                                                  find_calibration)
from ood_lightning.prediction.building import load_run
from ood_lightning.prediction.export import EXPORT_JSON, load_export
from ood_lightning.prediction.images import ImageInputs

Images = Sequence[str | os.PathLike | Image.Image] | Tensor


class LoadedDetector:
    """A detector with its preprocessing and (when calibrated) thresholds, ready to score images.

    Attributes: `model` (the OODDetector, in eval mode on `device`), `transform` (PIL -> tensor), `calibration`
    (calibration.json's content, or None), `batch_size`, `score_names`.
    """

    def __init__(self, model: OODDetector, transform, calibration: dict | None, device: str | torch.device = "cpu",
                 batch_size: int = 64):
        self.model = model.to(device).eval()
        self.transform = transform
        self.calibration = calibration
        self.device = torch.device(device)
        self.batch_size = int(batch_size)

    @property
    def score_names(self) -> tuple[str, ...]:
        return tuple(self.model.score_names)

    def score(self, images: Images) -> dict[str, np.ndarray]:
        """Every score type (and extra, e.g. "prediction") per image, float64 [N]; NaN for an unreadable file."""
        inputs = ImageInputs(images, self.transform)
        out = {name: np.full(len(inputs), np.nan) for name in (*self.model.score_names, *self.model.extra_names)}
        for start in range(0, len(inputs), self.batch_size):
            batch = collate([inputs[i] for i in range(start, min(start + self.batch_size, len(inputs)))])
            if not batch["index"].numel():
                continue
            with torch.no_grad():  # not inference_mode: DiffGuard takes gradients inside its score
                scores = self.model.score_images({**batch, "image": batch["image"].to(self.device)})
            for name, values in scores.items():
                out[name][batch["index"].numpy()] = values.detach().double().cpu().numpy()
        return out

    def predict(self, images: Images) -> dict[str, np.ndarray]:
        """Per calibrated score type, True where an image is flagged OOD (score above the threshold); False for an
        unreadable file (see `score`'s NaN)."""
        if self.calibration is None:
            raise NoCalibrationError(f"this detector has no calibration.json, so no thresholds. {HOW_TO_CALIBRATE}")
        scores = self.score(images)
        return decisions({name: scores[name] for name in self.model.score_names}, self.calibration)


def load_detector(source: str | os.PathLike, device: str | torch.device = "cpu", batch_size: int | None = None,
                  checkpoint: str | os.PathLike | None = None) -> LoadedDetector:
    """A run folder (config.yaml, checkpoints/last.ckpt or `checkpoint`, calibration.json) or a compact export
    (a folder or .json written by export.py) as a `LoadedDetector` on `device`."""
    quiet_console()
    source = Path(source)
    if source.suffix == ".json" or (source / EXPORT_JSON).is_file():
        model, transform, calibration, default_batch = load_export(source)
    else:
        model, transform, default_batch = load_run(source, checkpoint)
        calibration = find_calibration(source)
    return LoadedDetector(model, transform, calibration, device, batch_size or default_batch)
