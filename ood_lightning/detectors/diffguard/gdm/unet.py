"""The pixel-space diffusion model DiffGuard's classifier-guided path runs on, from local files."""
from __future__ import annotations

from pathlib import Path

from diffusers import UNet2DModel

from ..pixel_unet import load_unet_folder
from .adm_checkpoint import load_adm_unet


def load_pixel_unet(path: str, adm_num_head_channels: int = 64) -> UNet2DModel:
    """A diffusers `UNet2DModel` in eval mode from either
    - a folder saved by diffusers, e.g. a DDPM for 32x32 CIFAR-10 or one trained by this project's
      `configs/diffusion/` (see `load_unet_folder`), or
    - an openai guided-diffusion checkpoint file such as `256x256_diffusion_uncond.pt`, converted on the fly
      (`python -m ood_lightning.detectors.diffguard.gdm.adm_checkpoint` converts it once into a folder).
    """
    p = Path(path)
    if p.is_dir():
        return load_unet_folder(p)
    if p.is_file():
        return load_adm_unet(p, num_head_channels=adm_num_head_channels).eval().requires_grad_(False)
    raise FileNotFoundError(
        f"diffusion model not found: {p}. Give a diffusers UNet2DModel folder, or openai's guided-diffusion "
        "checkpoint 256x256_diffusion_uncond.pt (https://github.com/openai/guided-diffusion) placed in "
        "checkpoints/ (see checkpoints/README.md)")
