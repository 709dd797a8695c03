"""Train a detector, then evaluate it on its benchmark.

    python train.py                                      # offline demo: LFDN on scikit-learn's digits
    python train.py --config configs/lfdn/cifar10.yaml   # the paper's CIFAR-10 setting
    python train.py --config configs/lfdn/cifar10.yaml --trainer.max_epochs 3 --data.batch_size 64
    python train.py --help                               # every option, typed
"""
from __future__ import annotations

import sys
from pathlib import Path

from ood_lightning.cli import make_cli

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "lfdn" / "digits_demo.yaml"


def main(args: list[str] | None = None) -> None:
    if not (sys.argv[1:] if args is None else args):
        print("No arguments: running the offline demo (configs/lfdn/digits_demo.yaml).")
        args = ["--config", str(DEMO_CONFIG)]
    cli = make_cli(args, description=__doc__)  # None: LightningCLI reads sys.argv itself
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)


if __name__ == "__main__":
    main()
