"""A detector built from a run folder as the entry points build it (config.yaml through the CLI), with its weights
loaded as Trainer(ckpt_path=...) loads them and its test-time fit from fitted.pt, for load_detector and the
export."""
from __future__ import annotations

import os
from pathlib import Path

from ood_lightning.detectors.base import OODDetector
from ood_lightning.io import load_checkpoint
from ood_lightning.prediction.fitted import fit_key, load_fitted

# Building a detector from a config in the user's process: no global seeding, no logger, no progress bar.
BUILD_ONLY = ("--seed_everything", "false", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false")


def load_run(folder: Path, checkpoint: str | os.PathLike | None = None) -> tuple[OODDetector, object, int]:
    """(the detector with its trained weights, the preprocessing, the batch size) of a run folder, built from its
    config.yaml as the entry points build it."""
    from ood_lightning.cli import make_cli

    config = folder / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{folder}: no config.yaml. load_detector takes a run folder written by train.py or "
                                "evaluate.py (e.g. runs/NAME/lightning_logs/version_0) or a folder/.json written by "
                                "python -m ood_lightning.prediction.export.")
    cli = make_cli(["--config", str(config), *BUILD_ONLY], description="load_detector", model_class=OODDetector)
    checkpoint = Path(checkpoint) if checkpoint else folder / "checkpoints" / "last.ckpt"
    if checkpoint.is_file():
        load_weights(cli.model, load_checkpoint(checkpoint))
    load_fitted(cli.model, fit_key(cli.config.as_dict()), [folder], config=config)
    if hasattr(cli.model, "require_trained"):
        cli.model.require_trained()
    return cli.model, cli.datamodule.transform, cli.datamodule.hparams.batch_size


def load_weights(model: OODDetector, checkpoint: dict) -> None:
    """A Lightning checkpoint's weights into `model`, as Trainer(ckpt_path=...) loads them: the model's
    on_load_checkpoint first (LFDN: refuse other preprocessing, restore its frozen backbone), then strictly."""
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
