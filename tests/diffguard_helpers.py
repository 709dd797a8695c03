"""What the DiffGuard end-to-end tests share: a tiny random pixel UNet saved as a diffusers folder, and the
evaluate.py arguments that score a detector on the 16 px digits benchmark (0-4 in distribution, 5-9 OOD) or on
folders without labels."""
from __future__ import annotations

from pathlib import Path

import torch
from data_helpers import make_flat
from diffusers import UNet2DModel


def save_tiny_unet(path: Path) -> Path:
    """A 16 px UNet2DModel with one attention level, random weights (seed 0), saved to `path`."""
    torch.manual_seed(0)
    UNet2DModel(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=8).save_pretrained(path)
    return path


def evaluate_args(detector: str, init: dict, out: Path, batch_size: int, eval_subset: int) -> list[str]:
    """CPU, no logger, no progress bar, autograd on (DiffGuard needs it); `init` are the detector's init args."""
    args = ["--seed_everything", "0", "--trainer.accelerator", "cpu", "--trainer.inference_mode", "false",
            "--trainer.default_root_dir", str(out), "--trainer.enable_progress_bar", "false",
            "--trainer.logger", "false", "--model", detector,
            "--data.benchmark", "digits", "--data.image_size", "16", "--data.eval_subset", str(eval_subset),
            "--data.batch_size", str(batch_size), "--plots", "false"]
    for key, value in init.items():
        args += [f"--model.init_args.{key}", "null" if value is None else str(value)]
    return args


def unlabelled_folders(root: Path) -> list[str]:
    """evaluate.py's data arguments for a folders benchmark whose in-distribution folder holds its images directly,
    without class subfolders, so they have no label (NO_LABEL); two OOD images beside it."""
    make_flat(root / "id", n=3)
    make_flat(root / "other", n=2)
    return ["--data.benchmark", "folders", "--data.root", str(root), "--data.id_test", "id",
            "--data.ood", "{other: other}"]


def run_evaluate(args: list[str]) -> None:
    from evaluate import main

    main(args)
