"""Loading the pre-trained pixel-space diffusion model DiffGuard's classifier-guided path runs on, from local files,
and the `diffguard.json` that this project's `configs/diffusion/` exports beside the models it trains."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from diffusers import UNet2DModel

from ood_lightning.training.diffusion import EXPORT_INFO

# The diffguard.json fields that must equal a DiffGuard config's schedule fields of the same names.
SCHEDULE_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end")


def read_export_info(folder: str | Path) -> dict | None:
    """The null class and noise schedule a model exported by `configs/diffusion/` was trained with (its
    diffguard.json); None for a path without one (any other diffusers folder, or a checkpoint file)."""
    path = Path(folder) / EXPORT_INFO
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    if missing := [key for key in ("null_class", *SCHEDULE_KEYS) if key not in info]:
        raise ValueError(f"{path} lacks {missing}; re-export the model with this project's ClassConditionalDiffusion")
    return info


def check_training_schedule(model: str, trained: Mapping, config: Mapping) -> None:
    """Refuse a config whose noise schedule differs from the one the model was trained with (the SCHEDULE_KEYS that
    `trained` holds): its timesteps would mean other noise levels."""
    if wrong := [key for key in SCHEDULE_KEYS if key in trained and config[key] != trained[key]]:
        raise ValueError(f"{model} was trained with a different noise schedule than this config's: "
                         + ", ".join(f"{key} is {config[key]!r} here but {trained[key]!r} in training"
                                     for key in wrong))


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
