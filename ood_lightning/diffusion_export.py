"""`diffguard.json`: what a diffusion model trained by `configs/diffusion/` tells the DiffGuard pipelines that load it.

`training/diffusion.py` writes it beside the exported UNet; DiffGuard's GDM and LDM read the null class from it and
refuse a config whose noise schedule differs from the one the model was trained with. It lives apart from both so
that the detectors do not import the training code.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

EXPORT_INFO = "diffguard.json"
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
