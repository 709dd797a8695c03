"""The run folder: where every file of one run goes, whichever logger is configured.

Lightning's ModelCheckpoint writes into the first logger's run folder, `<save_dir>/<name>/<version>/checkpoints`
(the CSV and TensorBoard loggers' `log_dir`), and the evaluation (`Evaluation.output_dir`) puts the results beside
them. LightningCLI's own SaveConfigCallback writes config.yaml into `trainer.log_dir` instead, which for other
loggers (W&B, MLflow) is their `save_dir`, shared by every run: each run overwrote the last one's config.
`RunConfigCallback` writes it into the run folder, and removes the folder of a run that failed before writing
anything else into it.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

# What a run writes into its folder as it starts: LightningCLI's config and the CSV/TensorBoard hyperparameters.
STARTUP_FILES = {"config.yaml", "hparams.yaml"}


def run_folder(trainer) -> Path:
    """The first logger's run folder (where ModelCheckpoint writes); default_root_dir without a logger. Rank 0's
    answer: broadcast it where every rank must agree."""
    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    first = trainer.loggers[0]
    if isinstance(first, (CSVLogger, TensorBoardLogger)):
        return Path(first.log_dir)
    return Path(first.save_dir or trainer.default_root_dir, str(first.name), str(first.version))


def remove_unused_run_folder(trainer) -> bool:
    """Remove the run folder when it holds nothing but STARTUP_FILES and empty folders, and the folders above it this
    leaves empty, up to (not including) default_root_dir. Returns whether it removed the run folder.

    For a failed run: the loggers create the folder before the data and the checkpoint are read, so a run stopped by
    a missing data folder or a refused checkpoint left an empty or config-only `version_N` behind. Loggers save
    first, so metrics they still hold count as written and keep the folder."""
    folder = run_folder(trainer)
    if not folder.is_dir():
        return False
    for logger in trainer.loggers:
        logger.save()
    if any(p.relative_to(folder).as_posix() not in STARTUP_FILES for p in folder.rglob("*") if not p.is_dir()):
        return False
    shutil.rmtree(folder)
    root, parent = Path(trainer.default_root_dir).resolve(), folder.resolve().parent
    while root in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
    return True


class RunConfigCallback(SaveConfigCallback):
    """LightningCLI's config.yaml in the run folder (`run_folder`) for every logger, and no folder left behind by a
    run that fails before writing anything but that config (`remove_unused_run_folder`)."""

    def __init__(self, parser, config, config_filename: str = "config.yaml", overwrite: bool = False,
                 multifile: bool = False) -> None:
        super().__init__(parser, config, config_filename, overwrite, multifile, save_to_log_dir=False)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        """Called once per run, on rank 0, when the loggers have created the run folder."""
        path = run_folder(trainer) / self.config_filename
        path.parent.mkdir(parents=True, exist_ok=True)
        self.parser.save(self.config, str(path), skip_none=False, overwrite=self.overwrite, multifile=self.multifile)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.is_global_zero:
            remove_unused_run_folder(trainer)
