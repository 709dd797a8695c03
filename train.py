r"""Train a model: a detector is then evaluated on its benchmark; a training config (configs/diffusion/,
configs/classifier/) trains a model DiffGuard uses and exports it for the DiffGuard configs.

    python train.py                                      # offline demo: LFDN on scikit-learn's digits
    python train.py --config configs/lfdn/cifar10.yaml   # the paper's CIFAR-10 setting
    python train.py --config configs/lfdn/cifar10.yaml --trainer.max_epochs 3 --data.batch_size 64
    python train.py --config configs/diffusion/cifar10_jpeg.yaml   # a class-conditional diffusion model
    python train.py --config configs/classifier/mnist_0_4.yaml     # a classifier-under-protection
    python train.py --config configs/diffusion/mnist_0_4.yaml \
        --ckpt_path runs/diffusion_mnist_0_4/lightning_logs/version_0/checkpoints/last.ckpt   # resume
    python train.py --help-all                           # every option, typed

A detector is calibrated before its test (calibration.json in the run folder: thresholds at --calibration_tpr on
in-distribution train images it was not fit on), so evaluate.py reports what they give and predict.py decides.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ood_lightning.cli import make_cli
from ood_lightning.cli_messages import run_entry_point
from ood_lightning.detectors.base import OODDetector

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "lfdn" / "digits_demo.yaml"


def main(args: list[str] | None = None) -> None:
    if not (sys.argv[1:] if args is None else args):
        print("No arguments: running the offline demo (configs/lfdn/digits_demo.yaml).")
        args = ["--config", str(DEMO_CONFIG)]
    cli = make_cli(args, description=__doc__)  # None: LightningCLI reads sys.argv itself
    ckpt_path = cli.checkpoint_path()
    with cli.checkpoint_errors_explained(ckpt_path):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    if isinstance(cli.model, OODDetector):  # the training configs' models have no OOD scores to test
        cli.calibrate()  # thresholds on held-out ID train images, when the benchmark leaves some out of training
        if not cli.datamodule.has_test:
            print("No OOD test sets in this benchmark (folders without ood): trained, nothing to evaluate; "
                  "score new images with predict.py (docs/predict.md).")
            return
        cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)


if __name__ == "__main__":
    run_entry_point(main)
