"""DiffGuard's classifier-guided path (GDM): a pixel-space unconditional diffusion model (openai's guided-diffusion,
converted by `adm_checkpoint`, or any diffusers UNet2DModel), DDIM inversion with adaptive early stop on
guided-diffusion's respacing, and re-synthesis guided by the classifier's Clean Grad."""

from ood_lightning.detectors.diffguard.gdm.adm_checkpoint import load_adm_unet
from ood_lightning.detectors.diffguard.gdm.detector import DiffGuardGDM
from ood_lightning.detectors.diffguard.gdm.unet import load_pixel_unet

__all__ = ["DiffGuardGDM", "load_adm_unet", "load_pixel_unet"]
