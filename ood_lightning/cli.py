"""The LightningCLI wiring shared by train.py and evaluate.py: YAML configs, typed --help, dotted overrides."""
from __future__ import annotations

from typing import Optional

from lightning.pytorch.cli import LightningCLI

from ood_lightning.data.datamodule import OODDataModule
from ood_lightning.detectors.base import OODDetector

TRAINER_DEFAULTS = {"default_root_dir": "runs", "log_every_n_steps": 10}


class OODCLI(LightningCLI):
    """Adds the checkpoint path that both entry points take; the detector is chosen by class_path."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--ckpt_path",
            type=Optional[str],
            default=None,
            help="train.py: resume from this checkpoint ('last' = newest in the run folder); "
            "evaluate.py: score the weights in this checkpoint.",
        )


def make_cli(args: list[str] | None, description: str) -> OODCLI:
    return OODCLI(
        OODDetector,
        OODDataModule,
        subclass_mode_model=True,
        run=False,
        args=args,
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": description},
    )
