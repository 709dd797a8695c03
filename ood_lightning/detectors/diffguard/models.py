"""Loading the pre-trained pixel-space diffusion model DiffGuard's classifier-guided path runs on, from local files."""
from __future__ import annotations

from pathlib import Path

from diffusers import UNet2DModel


def load_pixel_unet(path: str, adm_num_head_channels: int = 64) -> UNet2DModel:
    """A diffusers `UNet2DModel` in eval mode from either
    - a folder saved by diffusers (`config.json` + weights; a pipeline folder with a `unet/` subfolder works too),
      e.g. a DDPM for 32x32 CIFAR-10 or one trained by this project's `configs/diffusion/`, or
    - an openai guided-diffusion checkpoint file such as `256x256_diffusion_uncond.pt`, converted on the fly
      (`python -m ood_lightning.detectors.diffguard.adm_checkpoint` converts it once into a folder).
    """
    p = Path(path)
    if p.is_dir():
        folder = p / "unet" if (p / "unet" / "config.json").is_file() else p
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{p} is not a diffusers UNet2DModel folder: no config.json in it or in "
                                    f"{p / 'unet'}")
        unet = UNet2DModel.from_pretrained(folder, local_files_only=True)
        return unet.eval().requires_grad_(False)
    if p.is_file():
        from .adm_checkpoint import load_adm_unet

        return load_adm_unet(p, num_head_channels=adm_num_head_channels).eval().requires_grad_(False)
    raise FileNotFoundError(
        f"diffusion model not found: {p}. Give a diffusers UNet2DModel folder, or openai's guided-diffusion "
        "checkpoint 256x256_diffusion_uncond.pt (https://github.com/openai/guided-diffusion) placed in "
        "checkpoints/ (see checkpoints/README.md)")
