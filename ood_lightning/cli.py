"""The LightningCLI wiring shared by train.py and evaluate.py: YAML configs, typed --help, dotted overrides."""
from __future__ import annotations

import argparse
from typing import Optional

import lightning as L
from jsonargparse import DefaultHelpFormatter

from lightning.pytorch.cli import LightningCLI, _get_module_type, _InstantiatorFn

from ood_lightning.data.datamodule import OODDataModule
from ood_lightning.wandb_logging import wandb_offline_without_credentials

class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the entry points' usage examples as written in --help."""


TRAINER_DEFAULTS = {"default_root_dir": "runs", "log_every_n_steps": 10}


class _ConfiguredModelInstantiator(_InstantiatorFn):
    """LightningCLI hands the model section of the config to every module of the model type it builds, nested ones
    included, as their hyperparameters: a CascadeFusion's baseline and refiner would save the fusion's config and
    miss their own. Only the configured class gets it here; nested detectors save their own init args."""

    def __call__(self, class_type, *args, applied_instantiation_links: dict, **kwargs):
        self.cli._dump_config()
        configured = self.cli.config_dump.get(self.key, {}).get("class_path")
        if configured and configured != f"{class_type.__module__}.{class_type.__qualname__}":
            return class_type(*args, **kwargs)
        return super().__call__(class_type, *args, applied_instantiation_links=applied_instantiation_links, **kwargs)


class OODCLI(LightningCLI):
    """Adds the checkpoint path that both entry points take; the model (a detector, or a model train.py only fits,
    e.g. configs/diffusion/) is chosen by class_path.

    After instantiation it hands the resolved config to the detector (results.json's config_hash is taken over
    it) and, when a WandbLogger is configured but no W&B credentials exist, switches W&B to offline mode instead
    of letting wandb.init stop the run.
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--ckpt_path",
            type=Optional[str],
            default=None,
            help="train.py: resume from this checkpoint ('last' = newest in the run folder); "
            "evaluate.py: score the weights in this checkpoint.",
        )
        parser.add_argument("--plots", type=bool, default=True,
                            help="write score histograms and ROC curves (plots/*.png) beside the results")

    def _add_instantiators(self) -> None:
        super()._add_instantiators()
        self.parser.add_instantiator(_ConfiguredModelInstantiator(cli=self, key="model"),
                                     _get_module_type(self._model_class), subclasses=self.subclass_mode_model)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        config = self.config.as_dict()
        self.model.run_config = {key: config.get(key) for key in ("seed_everything", "model", "data", "trainer")}
        self.model.write_plots = bool(config.get("plots", True))
        wandb_offline_without_credentials(self.trainer.loggers)


def make_cli(args: list[str] | None, description: str,
             model_class: type[L.LightningModule] = L.LightningModule) -> OODCLI:
    """The CLI of an entry point; a config's class_path must name a subclass of `model_class` (evaluate.py:
    OODDetector)."""
    return OODCLI(
        model_class,
        OODDataModule,
        subclass_mode_model=True,
        run=False,
        args=args,
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": description, "formatter_class": _HelpFormatter},
    )
