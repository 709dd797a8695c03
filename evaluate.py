"""Score a trained (or zero-training) detector on a benchmark and write the results table.

    python evaluate.py --config runs/digits_demo/lightning_logs/version_0/config.yaml \
        --ckpt_path runs/digits_demo/lightning_logs/version_0/checkpoints/last.ckpt
    python evaluate.py --config configs/lfdn/cifar10.yaml \
        --model.init_args.official_checkpoints '[checkpoint-0.pth, checkpoint-last.pth]'
    python evaluate.py --help
"""
from __future__ import annotations

import sys

from ood_lightning.cli import make_cli


def main(args: list[str] | None = None) -> None:
    cli = make_cli(sys.argv[1:] if args is None else args, description=__doc__)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path, verbose=False)


if __name__ == "__main__":
    main()
