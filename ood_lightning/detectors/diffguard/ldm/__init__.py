"""DiffGuard's classifier-free path (LDM): a class-conditional latent diffusion model (CompVis' cin256-v2, converted
by `compvis_checkpoint`, DiT, or the pixel-space export of `configs/diffusion/`), null-class DDIM inversion on
CompVis' sub-sequence, and re-synthesis with classifier-free guidance inside the classifier's Grad-CAM mask."""
from __future__ import annotations

from ood_lightning.lazy_exports import lazy_exports

EXPORTS = {  # loaded on first use: `python -m` runs the converter without importing it twice
    "LatentDiffusionParts": "ood_lightning.detectors.diffguard.ldm.compvis_checkpoint",
    "load_ldm_checkpoint": "ood_lightning.detectors.diffguard.ldm.compvis_checkpoint",
    "load_ldm_parts": "ood_lightning.detectors.diffguard.ldm.compvis_checkpoint",
    "save_ldm_parts": "ood_lightning.detectors.diffguard.ldm.compvis_checkpoint",
    "DiffGuardLDM": "ood_lightning.detectors.diffguard.ldm.detector",
    "compvis_tables": "ood_lightning.detectors.diffguard.ldm.detector",
    "LatentDiffusionModel": "ood_lightning.detectors.diffguard.ldm.latent_models",
    "load_latent_model": "ood_lightning.detectors.diffguard.ldm.latent_models",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
