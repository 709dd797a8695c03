"""Using a detector on new images: calibrated thresholds (calibration.py), scoring any images (images.py,
scoring.py, runner.py), predict.py's outputs (outputs.py), the Python API `load_detector` (api.py) and the compact
export (export.py). Names load on first use, as the package's own."""
from __future__ import annotations

from ood_lightning.lazy_exports import lazy_exports

EXPORTS = {
    "load_detector": "ood_lightning.prediction.api",
    "LoadedDetector": "ood_lightning.prediction.api",
    "export_detector": "ood_lightning.prediction.export",
    "read_calibration": "ood_lightning.prediction.calibration",
    "NoCalibrationError": "ood_lightning.prediction.calibration",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
