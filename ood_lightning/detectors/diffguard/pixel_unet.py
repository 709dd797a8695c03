"""Loading a diffusers `UNet2DModel` folder, which both DiffGuard pipelines run on: GDM unconditionally (e.g. a
DDPM for CIFAR-10, or a model trained by `configs/diffusion/` with its null class), LDM's pixel back-end
class-conditionally (the `configs/diffusion/` export)."""
from __future__ import annotations

from pathlib import Path

from diffusers import UNet2DModel


def load_unet_folder(path: str | Path) -> UNet2DModel:
    """A `UNet2DModel` in eval mode, frozen, from a folder saved by diffusers (`config.json` + weights; a pipeline
    folder with a `unet/` subfolder works too); local files only."""
    p = Path(path)
    folder = p / "unet" if (p / "unet" / "config.json").is_file() else p
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{p} is not a diffusers UNet2DModel folder: no config.json in it or in {p / 'unet'}")
    return UNet2DModel.from_pretrained(folder, local_files_only=True).eval().requires_grad_(False)
