"""Diffusion-based out-of-distribution detection on PyTorch Lightning.

The public API, importable from here (each loaded on first use, so `import ood_lightning` stays light):

    detectors    OODDetector (the interface), LFDNDetector, DiffGuardGDM, DiffGuardLDM, ClassifierBaselines,
                 CascadeFusion
    data         OODDataModule (benchmark presets, the feature cache), MultiLayerFeatures (frozen backbones),
                 build_classifier (classifiers-under-protection)
    evaluation   Evaluation (the Lightning callback that writes the results), rescore (tables from saved scores)
    files        load_checkpoint (never runs code from a file)
    new images   load_detector (a run folder or export -> det.score(images), det.predict(images)), export_detector
"""
from __future__ import annotations

from ood_lightning.detectors import DETECTORS
from ood_lightning.lazy_exports import lazy_exports

EXPORTS = {
    **DETECTORS,
    "OODDataModule": "ood_lightning.data",
    "MultiLayerFeatures": "ood_lightning.backbones",
    "build_classifier": "ood_lightning.classifiers",
    "Evaluation": "ood_lightning.evaluation",
    "rescore": "ood_lightning.report",
    "load_checkpoint": "ood_lightning.io",
    "load_detector": "ood_lightning.prediction.api",
    "export_detector": "ood_lightning.prediction.export",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
