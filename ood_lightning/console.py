"""What the libraries print that a user of this project can do nothing about, kept off the console.

A run should show its progress bars, what it is doing and the results table. Lightning, torch and diffusers also
print advertisements, packaging notices and warnings about choices this project makes on purpose; each is listed
here with the reason it cannot help the user, and filtered by its exact message (and category or logger). Every
other warning still shows, so one a user can act on (few dataloader workers, a logging interval longer than an
epoch, a checkpoint folder that is not empty) is never hidden. `quiet_console` is called by both entry points
(`cli_messages.run_entry_point`).
"""
from __future__ import annotations

import logging
import re
import warnings

# (message pattern, matched from its start; category; why it cannot help the user)
WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (r"You passed in a `val_dataloader` but have no `validation_step`", UserWarning,
     "the datamodule offers its ID test split for validation to the training configs; detectors do not validate"),
    (r"Total length of `list` across ranks is zero", UserWarning,
     "folders with train images only leave nothing to validate on; the datamodule says that in words"),
    (r"Found \d+ module\(s\) in eval mode at the start of training", UserWarning,
     "frozen backbones and classifiers stay in eval mode on purpose (BatchNorm on its running statistics)"),
    (r"Starting from v1\.9\.0, `tensorboardX` has been removed as a dependency", UserWarning,
     "a Lightning packaging notice; the CSV logs it falls back to are complete, and W&B is a config option"),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning,
     "torch deprecating an API that Lightning itself calls; nothing in this project or its configs uses it"),
)

# (logger, message pattern matched from its start, why it cannot help the user)
LOG_RECORDS: tuple[tuple[str, str, str], ...] = (
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip: ",
     "advertisements for Lightning's cloud services (litlogger, litmodels)"),
    ("lightning.pytorch.utilities.rank_zero",
     r"The following callbacks returned in `LightningModule.configure_callbacks` will override existing callbacks "
     r"passed to Trainer: (ModelCheckpoint|RNGStateCheckpoint)(, (ModelCheckpoint|RNGStateCheckpoint))?$",
     "the training modules replace the trainer's default ModelCheckpoint with their last.ckpt one on purpose, and "
     "testing after fit meets the same callbacks again"),
    ("lightning.pytorch.utilities.rank_zero", r"TPU available: False, using: 0 TPU cores$",
     "there is no TPU; the GPU line above it says what runs"),
    ("diffusers.models.modeling_utils", r"Cannot initialize model with low cpu memory usage because `accelerate`",
     "the models load once per run and fit in memory without accelerate's lazy initialisation"),
    ("diffusers.pipelines.pipeline_utils", r"Cannot initialize model with low cpu memory usage because `accelerate`",
     "as above, for DiT pipeline folders"),
)


class DropMessages(logging.Filter):
    """Drops a logger's records whose message starts with one of `patterns`."""

    def __init__(self) -> None:
        super().__init__()
        self.patterns: list[re.Pattern] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(pattern.match(message) for pattern in self.patterns)


def quiet_console() -> None:
    """Install the filters above (calling it again changes nothing)."""
    for message, category, _ in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, message, _ in LOG_RECORDS:
        logger = logging.getLogger(name)
        drop = next((f for f in logger.filters if isinstance(f, DropMessages)), None)
        if drop is None:
            drop = DropMessages()
            logger.addFilter(drop)
        if all(pattern.pattern != message for pattern in drop.patterns):
            drop.patterns.append(re.compile(message))
