"""W&B: the results table, score histograms, plots and image grids for a WandbLogger, and offline mode when there
are no credentials. W&B is a convenience: its failures become warnings, never a failed run."""
from __future__ import annotations

import contextlib
import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ood_lightning.report import COLUMNS, table_rows


@contextlib.contextmanager
def _warn_on_error(what: str):
    """W&B is a convenience: its failures (network, quota, a bad value) become warnings, never a failed run."""
    try:
        yield
    except Exception as err:
        warnings.warn(f"{what} failed and was skipped ({type(err).__name__}: {err})", stacklevel=3)


def wandb_loggers(loggers: Iterable) -> list:
    """The WandbLoggers among a trainer's loggers."""
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover - lightning always ships it
        return []
    return [lg for lg in loggers if isinstance(lg, WandbLogger)]


def wandb_credentials_found() -> bool:
    """Whether W&B could authenticate without asking: an API key or identity token in the environment, a .netrc
    entry for the W&B host, or a key in wandb's settings. Reads local files only, never the network."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    base_url = os.environ.get("WANDB_BASE_URL", "")
    with contextlib.suppress(Exception):
        import wandb

        settings = wandb.Settings()
        if settings.api_key:
            return True
        base_url = base_url or settings.base_url
    host = (re.sub(r"^\w+://", "", base_url).split("/")[0].split(":")[0]) if base_url else ""
    import netrc

    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    with contextlib.suppress(Exception):
        hosts = netrc.netrc(path).hosts
        return any(h == host or "wandb" in h for h in hosts)
    return False


def wandb_offline_without_credentials(trainer_config) -> bool:
    """In the parsed trainer config (before the loggers exist): switch W&B to offline mode (WANDB_MODE=offline) when
    a WandbLogger is configured without `offline: true`, no mode was chosen and no credentials exist: wandb.init
    would otherwise stop the run with "No API key configured". Returns whether it switched. cli.py calls it before
    the run starts, so spawned and launched processes inherit the mode."""
    candidates = [logger for logger in _configured_loggers(trainer_config)
                  if _is_wandb_config(logger) and not logger.init_args.get("offline", False)]
    if not candidates or os.environ.get("WANDB_MODE") or wandb_credentials_found():
        return False
    os.environ["WANDB_MODE"] = "offline"
    from lightning.pytorch.utilities import rank_zero_warn  # once, not once per DDP process

    rank_zero_warn("W&B: no API key found (WANDB_API_KEY, ~/.netrc, `wandb login`), so the run is logged offline "
                   "under the logger's save_dir/wandb/offline-run-*; upload it later with `wandb sync <that folder>`",
                   category=UserWarning)
    return True


def _configured_loggers(trainer_config) -> list:
    """The logger entries of a parsed trainer config (one, a list, or none)."""
    loggers = trainer_config.logger
    return loggers if isinstance(loggers, list) else [loggers]


def _is_wandb_config(logger) -> bool:
    class_path = getattr(logger, "class_path", "") or ""
    return class_path.rsplit(".", 1)[-1] == "WandbLogger"


def wandb_save_dir_in_root_dir(trainer_config) -> None:
    """In the parsed trainer config (before the loggers exist): give a WandbLogger left at its save_dir default (".",
    the current directory) the trainer's default_root_dir.

    Its run folder `<save_dir>/<project>/<run id>` (checkpoints, results, config.yaml) and W&B's own
    `<save_dir>/wandb/` then land under the run's root like every other logger's, not in whatever directory the
    command ran from (`ood_lightning/<run id>/` inside the source tree, for `--trainer.logger` with project
    ood_lightning run from the repository). cli.py calls it before instantiating the trainer."""
    for logger in _configured_loggers(trainer_config):
        if _is_wandb_config(logger) and logger.init_args.get("save_dir") in (None, "."):
            logger.init_args.save_dir = trainer_config.default_root_dir


def log_results_to_wandb(loggers: Iterable, results: dict, per_set: Mapping[str, dict],
                         plots: Iterable[Path] = (), step: int | None = None, bins: int = 64) -> None:
    """To each WandbLogger: the results table (a W&B Table under test/results), a histogram of every score of every
    test set (test/<set>/<score>/histogram), the plot PNGs (test/plots/<file>) and the config hash (run config).
    The metrics themselves reach every logger through LightningModule.log (test/<set>/<score>/<metric>)."""
    plots = list(plots)
    for logger in wandb_loggers(loggers):
        with _warn_on_error("W&B results logging"):
            import wandb

            logger.log_table("test/results", columns=list(COLUMNS),
                             data=[[r[c] for c in COLUMNS] for r in table_rows(results)], step=step)
            hists = {}
            for name, s in per_set.items():
                for score, values in s["scores"].items():
                    values = np.asarray(values, dtype=np.float64)
                    values = values[np.isfinite(values)]
                    if values.size:
                        hists[f"test/{name}/{score}/histogram"] = wandb.Histogram(
                            np_histogram=np.histogram(values, bins=bins))
            if hists:
                logger.log_metrics(hists, step=step)
            for path in plots:
                logger.log_image(f"test/plots/{Path(path).stem}", [str(path)], step=step)
            logger.experiment.config.update(
                {k: results.get(k) for k in ("config_hash", "checkpoint", "benchmark", "detector")},
                allow_val_change=True)


def log_image_grid(loggers: Iterable, key: str, images, *, caption: str | None = None, nrow: int = 8,
                   step: int | None = None) -> None:
    """Log images [N, 3, H, W] (or [N, 1, H, W]) in [0, 1] as one grid to each WandbLogger and TensorBoardLogger.

    The evaluation logs the pictures detectors hand over with `OODDetector.show` (DiffGuard: input / inversion /
    synthesis rows) through it. Other loggers are left alone; failures become warnings."""
    import torch
    from torchvision.utils import make_grid

    loggers = list(loggers)
    if not loggers:
        return
    grid = make_grid(torch.as_tensor(images).detach().float().cpu().clamp(0, 1), nrow=nrow)
    try:
        from lightning.pytorch.loggers import TensorBoardLogger
    except ImportError:  # pragma: no cover
        TensorBoardLogger = ()
    for logger in wandb_loggers(loggers):
        with _warn_on_error("W&B image logging"):
            logger.log_image(key, [grid], step=step, **({"caption": [caption]} if caption else {}))
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            with _warn_on_error("TensorBoard image logging"):
                logger.experiment.add_image(key, grid, global_step=step)

