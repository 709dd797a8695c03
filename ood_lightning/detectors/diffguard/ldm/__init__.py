"""DiffGuard's classifier-free path (LDM): a class-conditional latent diffusion model (CompVis' cin256-v2, converted
by `compvis_checkpoint`, DiT, or the pixel-space export of `configs/diffusion/`), null-class DDIM inversion on
CompVis' sub-sequence, and re-synthesis with classifier-free guidance inside the classifier's Grad-CAM mask."""

from ood_lightning.detectors.diffguard.ldm.compvis_checkpoint import (LatentDiffusionParts, load_ldm_checkpoint,
                                                                      load_ldm_parts, save_ldm_parts)
from ood_lightning.detectors.diffguard.ldm.detector import DiffGuardLDM, compvis_tables
from ood_lightning.detectors.diffguard.ldm.latent_models import LatentDiffusionModel, load_latent_model

__all__ = ["DiffGuardLDM", "LatentDiffusionModel", "LatentDiffusionParts", "compvis_tables", "load_latent_model",
           "load_ldm_checkpoint", "load_ldm_parts", "save_ldm_parts"]
