"""DiffGuard's classifier-guided path (GDM): a pixel-space unconditional diffusion model (openai's guided-diffusion,
converted by `adm_checkpoint`, or any diffusers UNet2DModel), DDIM inversion with adaptive early stop on
guided-diffusion's respacing, and re-synthesis guided by the classifier's Clean Grad."""
from __future__ import annotations

from ood_lightning.lazy_exports import lazy_exports

EXPORTS = {  # loaded on first use: `python -m` runs the converter without importing it twice
    "load_adm_unet": "ood_lightning.detectors.diffguard.gdm.adm_checkpoint",
    "DiffGuardGDM": "ood_lightning.detectors.diffguard.gdm.detector",
    "load_pixel_unet": "ood_lightning.detectors.diffguard.gdm.unet",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
