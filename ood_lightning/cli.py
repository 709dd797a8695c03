"""The LightningCLI wiring shared by train.py and evaluate.py: YAML configs, typed --help, dotted overrides."""
from __future__ import annotations

import argparse
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import lightning as L
from jsonargparse import ArgumentError, DefaultHelpFormatter
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from ood_lightning.cli_messages import (DETECTORS, FULL_HELP_FLAG, HELP_FLAGS, TRAINING_MODELS, load_class,
                                        offending_arguments, readable_argument_errors, short_help)
from ood_lightning.config_files import WHERE_TO_GET_THEM, missing_files
from ood_lightning.data.datamodule import OODDataModule
from ood_lightning.detectors.base import OODDetector
from ood_lightning.errors import CheckpointMismatchError
from ood_lightning.evaluation import Evaluation
from ood_lightning.io import SafeCheckpointIO, is_url, load_checkpoint
from ood_lightning.prediction.calibration import CALIBRATION_FILE
from ood_lightning.prediction.runner import calibrate_run
from ood_lightning.report import config_hash
from ood_lightning.run_folder import RunConfigCallback
from ood_lightning.wandb_logging import wandb_offline_without_credentials, wandb_save_dir_in_root_dir


class _HelpFormatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the entry points' usage examples as written in --help."""


TRAINER_DEFAULTS = {"default_root_dir": "runs", "log_every_n_steps": 10}


class OODCLI(LightningCLI):
    """Adds the checkpoint path that both entry points take; the model (a detector, or a model train.py only fits,
    e.g. configs/diffusion/) is chosen by class_path.

    A detector gets the evaluation (`Evaluation`, configured by --results_dir, --plots and the resolved config that
    results.json's config_hash is taken over) as a trainer callback. The trainer reads checkpoints through
    `SafeCheckpointIO` (never running pickled code, URLs included) and, when a WandbLogger is configured but no
    W&B credentials exist, W&B is switched to offline mode instead of letting wandb.init stop the run. An error raised by a class's constructor (a missing or refused
    weight file, say) comes out as itself, not inside jsonargparse's dump of every union subtype.
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--ckpt_path",
            type=Optional[str],
            default=None,
            help="train.py: resume from this checkpoint ('last' = newest in the run folder); "
            "evaluate.py: score the weights in this checkpoint.",
        )
        parser.add_argument("--results_dir", type=Optional[str], default=None,
                            help="where a detector's results go (results.json/csv/md, scores/, plots/, grids/); "
                            "default: the run folder")
        parser.add_argument("--plots", type=bool, default=True,
                            help="write score histograms and ROC curves (plots/*.png) beside the results")
        parser.add_argument("--calibrate", type=bool, default=False,
                            help="evaluate.py: also set thresholds on held-out ID train images (calibration.json in "
                            "the results folder; train.py always does when such images exist). docs/predict.md")
        parser.add_argument("--calibration_size", type=Optional[int], default=None,
                            help="ID train images to calibrate on; default: up to 1000 of those train_subset leaves "
                            "out. More than those are held out of training.")
        parser.add_argument("--calibration_tpr", type=float, default=0.95,
                            help="the ID true-positive rate the calibrated thresholds keep (0.95: FPR95's point)")

    def parse_arguments(self, parser, args) -> None:
        """Parse; on an error, parse again without the command-line option it names, and so on, then report every
        problem found, one line each, instead of jsonargparse's usage dump and first error."""
        args = list(sys.argv[1:] if args is None else args)
        problems = []
        for _ in range(MAX_REPORTED_PROBLEMS):
            try:
                self.config = parser.parse_args(args)
                break
            except ArgumentError as error:
                offending = offending_arguments(str(error), args)
                known = [option for action in parser._actions for option in action.option_strings]
                problems += readable_argument_errors(str(error), offending, known)
                if not offending:
                    break
                args = _without_options(args, offending)
        if problems:
            prog = Path(sys.argv[0]).name
            lines = "\n".join(f"  {problem}" for problem in problems)
            print(f"{prog}: {len(problems)} problem(s) in the arguments:\n{lines}\n"
                  f"{prog} --help lists the models and configs; {prog} --help-all every option.", file=sys.stderr)
            raise SystemExit(2)

    def before_instantiate_classes(self) -> None:
        """Before any model is built: every file the config names must exist (all missing ones in one message);
        W&B without a save_dir writes under the trainer's default_root_dir."""
        missing = missing_files(self.config.as_dict())
        ckpt_path = self.config.get("ckpt_path")
        if ckpt_path not in (None, "last") and not is_url(ckpt_path) and not Path(ckpt_path).is_file():
            missing.append(f"--ckpt_path: {ckpt_path} does not exist")
        if missing:
            raise FileNotFoundError("\n".join([f"{len(missing)} file(s) this config names are missing:",
                                                *(f"  {line}" for line in missing), WHERE_TO_GET_THEM]))
        wandb_save_dir_in_root_dir(self.config.trainer)
        wandb_offline_without_credentials(self.config.trainer)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:
            cause = _constructor_error(error)
            if cause is None:
                raise
            raise cause from None
        if type(self.trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # a user's own plugin is left alone
            self.trainer.strategy.checkpoint_io = SafeCheckpointIO()
        if isinstance(self.datamodule, OODDataModule):
            self.datamodule.calibration_size = self.config.get("calibration_size")
        if isinstance(self.model, OODDetector):
            config = self.config.as_dict()
            self.run_config = {key: config.get(key) for key in ("seed_everything", "model", "data", "trainer")}
            self.evaluation = Evaluation(config.get("results_dir"), bool(config.get("plots", True)), self.run_config)
            self.evaluation.calibration_follows = bool(config.get("calibrate"))
            self.trainer.callbacks.append(self.evaluation)

    def calibrate(self, ckpt_path: str | None = None, required: bool = False) -> Path | None:
        """Thresholds from the held-out ID train images into calibration.json of the results folder (see
        prediction/calibration.py); returns the file, or None when no image was left for it (not `required`)."""
        folder = self.evaluation.output_dir(self.trainer)
        calibration = calibrate_run(self.trainer, self.model, self.datamodule, folder,
                                    tpr=self.config.get("calibration_tpr", 0.95),
                                    config_hash=config_hash(self.run_config), ckpt_path=ckpt_path, required=required)
        return None if calibration is None else folder / CALIBRATION_FILE

    def checkpoint_path(self) -> str | None:
        """--ckpt_path as a file to load: 'last' is the newest last.ckpt of this run's folder (said on the console);
        a local path was checked before the classes were built."""
        path = self.config.ckpt_path
        if path is None or is_url(path):
            return path
        if path == "last":
            roots = self._run_roots()
            found = newest_last_checkpoint(roots)
            if found is None:
                raise FileNotFoundError(
                    f"--ckpt_path last: no last.ckpt in the run folder {' or '.join(map(str, roots))} (looked in "
                    "checkpoints/ and <logger name>/<version>/checkpoints/). The run has not finished an epoch, or "
                    "it ran with another trainer.default_root_dir: give the checkpoint file itself, or start "
                    "without --ckpt_path.")
            rank_zero_info(f"--ckpt_path last: {found}")
            return str(found)
        return path

    @contextmanager
    def checkpoint_errors_explained(self, ckpt_path: str | None) -> Iterator[None]:
        """Turns torch's list of missing and mis-shaped state-dict keys, raised when --ckpt_path holds weights of
        another model config, into which options differ and the config the checkpoint was trained with."""
        try:
            yield
        except RuntimeError as error:
            if ckpt_path is None or "Error(s) in loading state_dict" not in str(error):
                raise
            raise CheckpointMismatchError(_mismatch_message(ckpt_path, dict(self.model.hparams), str(error))) from None

    def _run_roots(self) -> list[Path]:
        """Where this run's checkpoints go: the trainer's default_root_dir and every logger's save_dir."""
        roots = [Path(self.trainer.default_root_dir)]
        for logger in self.trainer.loggers:
            if logger.save_dir and Path(logger.save_dir) not in roots:
                roots.append(Path(logger.save_dir))
        return roots


class PredictCLI(OODCLI):
    """predict.py's CLI: OODCLI's options (a run's config, --ckpt_path, --trainer.*) plus what to score and where to
    write; no run folder, logger or config file is written (the images are not a run)."""

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_argument("--run", type=Optional[str], default=None,
                            help="a run folder (config.yaml, checkpoints/last.ckpt, calibration.json): instead of "
                            "--config and --ckpt_path")
        parser.add_argument("--images", type=str, required=True,
                            help="a folder of images (recursive), a .txt list of paths (one a line, relative to the "
                            "list), an image, or a quoted glob ('photos/**/*.jpg')")
        parser.add_argument("--out_dir", type=str, default="predictions",
                            help="where predictions.csv and contact_sheet.png go")
        parser.add_argument("--calibration", type=Optional[str], default=None,
                            help="calibration.json (file or folder); default: the run folder's, or the one beside "
                            "the checkpoint's checkpoints/ folder")
        parser.add_argument("--sheet_score", type=Optional[str], default=None,
                            help="the score the contact sheet ranks by; default: the detector's first")
        parser.add_argument("--sheet_images", type=int, default=8, help="images per contact-sheet row")


def run_arguments(args: list[str]) -> list[str]:
    """predict.py's `--run FOLDER` as the options it stands for, placed first so later options override them:
    --config FOLDER/config.yaml, --ckpt_path FOLDER/checkpoints/last.ckpt (when there), no logger, no checkpoints."""
    args = list(args)
    run = None
    for i, arg in enumerate(args):
        if arg == "--run" and i + 1 < len(args):
            run = args[i + 1]
        elif arg.startswith("--run="):
            run = arg.split("=", 1)[1]
    implied = ["--trainer.logger", "false", "--trainer.enable_checkpointing", "false"]
    if run is not None:
        folder = Path(run)
        if not (folder / "config.yaml").is_file():
            raise FileNotFoundError(f"--run {run}: no config.yaml in that folder. A run folder is what train.py or "
                                    "evaluate.py wrote (e.g. runs/NAME/lightning_logs/version_0); or give --config "
                                    "and --ckpt_path instead.")
        implied = ["--config", str(folder / "config.yaml"), *implied]
        checkpoint = folder / "checkpoints" / "last.ckpt"
        if checkpoint.is_file() and "--ckpt_path" not in args and not any(a.startswith("--ckpt_path=") for a in args):
            implied += ["--ckpt_path", str(checkpoint)]
    return [*implied, *args]


def _mismatch_message(ckpt_path: str, hparams: dict, torch_error: str) -> str:
    saved = load_checkpoint(ckpt_path).get("hyper_parameters", {})
    differing = [f"{key} (checkpoint: {saved.get(key)!r}, this config: {hparams.get(key)!r})"
                 for key in sorted(set(saved) | set(hparams)) if not key.startswith("_")
                 and saved.get(key) != hparams.get(key)]
    run_config = Path(ckpt_path).resolve().parent.parent / "config.yaml"  # <run>/checkpoints/<file>.ckpt
    source = f"its run's config is {run_config}: use --config {run_config}" if run_config.is_file() else \
        "no config.yaml beside its checkpoints/ folder says how it was configured"
    keys = re.findall(r"(Missing key\(s\)|Unexpected key\(s\)|size mismatch)", torch_error)
    return (f"--ckpt_path {ckpt_path} holds weights of another model configuration than this config builds; "
            f"{source}. Options that differ: {'; '.join(differing) or 'none recorded (a different model class?)'}. "
            f"(torch found: {', '.join(sorted(set(keys))) or torch_error.splitlines()[0]}.)")


def newest_last_checkpoint(roots: list[Path]) -> Path | None:
    """The most recently written last.ckpt at <root>/checkpoints/ (no logger) or <root>/<name>/<version>/checkpoints/
    (TensorBoard, CSV: lightning_logs/version_N; W&B: <project>/<run id>)."""
    found = [p for root in roots for pattern in ("checkpoints/last.ckpt", "*/*/checkpoints/last.ckpt")
             for p in root.glob(pattern) if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns, default=None)


def _constructor_error(error: ValueError) -> BaseException | None:
    """The exception a constructor raised, when jsonargparse wrapped it in its union-subtype report; else None."""
    if "Does not validate against any of the Union subtypes" not in str(error):
        return None
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    frames = traceback.extract_tb(cause.__traceback__)
    raised_by_jsonargparse = not frames or "jsonargparse" in Path(frames[-1].filename).parts
    return None if cause is error or raised_by_jsonargparse else cause


MAX_REPORTED_PROBLEMS = 10


def _without_options(args: list[str], options: list[str]) -> list[str]:
    """`args` less each of `options` and the value that follows it (unless given as --option=value)."""
    kept, skip_value = [], False
    for arg in args:
        if skip_value:
            skip_value = False
            if not arg.startswith("--"):
                continue
        if arg.split("=", 1)[0] in options:
            skip_value = "=" not in arg
            continue
        kept.append(arg)
    return kept


def make_cli(args: list[str] | None, description: str,
             model_class: type[L.LightningModule] = L.LightningModule, cli_class: type[OODCLI] = OODCLI) -> OODCLI:
    """The CLI of an entry point; a config's class_path must name a subclass of `model_class` (evaluate.py:
    OODDetector). `-h`/`--help` prints the short help (models, configs, where to look next); `--help-all` is
    LightningCLI's full help; the optimizer is each model's own (no --optimizer / --lr_scheduler switch, which
    would silently replace it)."""
    argv = sys.argv[1:] if args is None else list(args)
    if any(arg in HELP_FLAGS for arg in argv):
        print(short_help(Path(sys.argv[0]).name, description))
        raise SystemExit(0)
    if any(arg == FULL_HELP_FLAG or arg.endswith(".help") for arg in argv):
        for class_path in DETECTORS + TRAINING_MODELS:  # listed in the help, found by short name in --model.help
            load_class(class_path)
        args = ["--help" if arg == FULL_HELP_FLAG else arg for arg in argv]
    return cli_class(
        model_class,
        OODDataModule,
        subclass_mode_model=True,
        run=False,
        args=args,
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_callback=None if cli_class is PredictCLI else RunConfigCallback,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        parser_kwargs={"description": description, "formatter_class": _HelpFormatter, "exit_on_error": False},
    )
