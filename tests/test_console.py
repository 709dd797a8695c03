"""A run's console shows progress, what happens and the results table, not the libraries' tips and notices; a
warning the user can act on still shows."""
from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from ood_lightning.console import LOG_RECORDS, quiet_console
from diffguard_helpers import save_tiny_unet
from script_runs import REPO, script_env, tiny_lfdn

# What train.py and evaluate.py printed before ood_lightning.console (each a part of one line).
NOISE = (
    "💡 Tip",  # litlogger / litmodels advertisements
    "`tensorboardX` has been removed as a dependency",
    "module(s) in eval mode",
    "LeafSpec",
    "will override existing callbacks",
    "You passed in a `val_dataloader` but have no `validation_step`",
    "TPU available: False",
    "Cannot initialize model with low cpu memory usage",  # diffusers without accelerate
)


def run_script(script: str, config: dict, folder: Path) -> str:
    """stdout and stderr of `script --config` run on `config`, with every warning shown once (PYTHONWARNINGS=default;
    script_env switches them off), so only the console can hide noise."""
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    run = subprocess.run([sys.executable, str(REPO / script), "--config", str(path)], cwd=folder,
                         env=script_env(PYTHONWARNINGS="default"), capture_output=True, text=True, timeout=900)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    return output


def noise_in(output: str) -> list[str]:
    return [line for line in output.splitlines() if any(part in line for part in NOISE)]


def test_a_train_py_run_prints_no_noise_and_the_table(tmp_path):
    config = {"seed_everything": 0,
              "trainer": {"max_epochs": 1, "accelerator": "cpu", "default_root_dir": str(tmp_path / "runs"),
                          "enable_progress_bar": False},
              "model": tiny_lfdn(tmp_path / "cache"),
              "data": {"benchmark": "digits", "image_size": 32, "batch_size": 16, "train_subset": 32,
                       "eval_subset": 8}}  # 2 training batches
    config["model"]["init_args"]["allow_untrained"] = True
    output = run_script("train.py", config, tmp_path)
    assert "| mse | digits_5_9 |" in output, f"no results table:\n{output}"
    assert "GPU available:" in output, "what runs where still shows"
    assert "is smaller than the logging interval" in output, "a warning the user can act on still shows"
    assert not noise_in(output), "\n".join(noise_in(output))


def test_an_evaluate_py_diffguard_run_prints_no_noise_and_the_table(tmp_path):
    init = {"diffusion_model": str(save_tiny_unet(tmp_path / "unet")), "classifier": "cifar_resnet20",
            "classifier_weights": None, "num_classes": 10, "num_steps": 4, "max_inversion_steps": 2,
            "stop_psnr": 14.0, "stop_dists_similarity": None, "cutouts": 0, "similarities": ["l2"]}
    config = {"seed_everything": 0,
              "trainer": {"accelerator": "cpu", "inference_mode": False, "default_root_dir": str(tmp_path / "runs"),
                          "enable_progress_bar": False},
              "model": {"class_path": "ood_lightning.detectors.diffguard.gdm.DiffGuardGDM", "init_args": init},
              "data": {"benchmark": "digits", "image_size": 16, "batch_size": 4, "eval_subset": 4}}
    output = run_script("evaluate.py", config, tmp_path)
    assert "| l2 | digits_5_9 |" in output, f"no results table:\n{output}"
    assert not noise_in(output), "\n".join(noise_in(output))


@pytest.fixture
def quiet():
    """quiet_console() for one test: the warning filters and the loggers' filters are restored afterwards."""
    loggers = {name: logging.getLogger(name) for name, _, _ in LOG_RECORDS}
    before = {name: list(logger.filters) for name, logger in loggers.items()}
    with warnings.catch_warnings():
        quiet_console()
        yield
    for name, logger in loggers.items():
        logger.filters[:] = before[name]


def test_only_the_listed_warnings_are_filtered(quiet):
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")  # every warning the console filters let through is recorded
        quiet_console()
        warnings.warn("Found 266 module(s) in eval mode at the start of training. This may lead to ...", UserWarning)
        warnings.warn("The 'train_dataloader' does not have many workers which may be a bottleneck.", UserWarning)
        warnings.warn("Found 3 module(s) in eval mode at the start of training.", DeprecationWarning)
    assert [str(w.message) for w in caught] == [
        "The 'train_dataloader' does not have many workers which may be a bottleneck.",
        "Found 3 module(s) in eval mode at the start of training.",  # another category: not Lightning's notice
    ]


def test_only_the_listed_log_messages_are_filtered(quiet):
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    log.addHandler(handler)
    level, log.level = log.level, logging.INFO
    override = ("The following callbacks returned in `LightningModule.configure_callbacks` will override existing "
                "callbacks passed to Trainer: ")
    try:
        for message in ("💡 Tip: For seamless cloud logging ...", override + "ModelCheckpoint, RNGStateCheckpoint",
                        override + "EarlyStopping", "GPU available: True (cuda), used: True"):
            log.info(message)
    finally:
        log.removeHandler(handler)
        log.level = level
    assert [r.getMessage() for r in records] == [override + "EarlyStopping", "GPU available: True (cuda), used: True"]
