"""OOD detectors: each turns a batch into per-sample OOD scores (higher = more OOD) through the one interface of
`base.OODDetector`. The detectors are importable from here too (loaded on first use)."""
from __future__ import annotations

from ood_lightning.lazy_exports import lazy_exports

DETECTORS = {  # name -> the module that defines or re-exports it
    "OODDetector": "ood_lightning.detectors.base",
    "LFDNDetector": "ood_lightning.detectors.lfdn",
    "DiffGuardGDM": "ood_lightning.detectors.diffguard.gdm",
    "DiffGuardLDM": "ood_lightning.detectors.diffguard.ldm",
    "ClassifierBaselines": "ood_lightning.detectors.baselines",
    "PostHocDetector": "ood_lightning.detectors.posthoc",
    "CascadeFusion": "ood_lightning.detectors.fusion",
}
__all__ = sorted(DETECTORS)
__getattr__, __dir__ = lazy_exports(__name__, DETECTORS)
