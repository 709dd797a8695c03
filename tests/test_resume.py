"""A training run killed with SIGKILL mid-epoch and restarted with `--ckpt_path last` ends at the same weights as one
never interrupted: train.py in subprocesses (digits, 4 optimizer steps per epoch, 3 epochs) on a tiny LFDN, whose
training randomness is seeded per sample, and on a tiny class-conditional diffusion model, whose noise, timesteps
and label dropout come from the global generators that the checkpoint's RNG states restore. The runs use the default
logger, as the shipped configs do: the restart finds the killed run's last.ckpt in lightning_logs/version_0 and
continues from its step (an unresumed restart would also end at the same weights, training being deterministic)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from ood_lightning.io import load_checkpoint
from script_runs import REPO, TINY_UNET, script_env, tiny_lfdn

KILL_AT_STEP = 6  # in the middle of epoch 1; last.ckpt then holds the end of epoch 0 (step 4)


class RecordStartStep(L.Callback):
    """Writes the global step training starts at (after any checkpoint was restored) to `path`."""

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, *args) -> None:
        Path(self.path).write_text(str(trainer.global_step))


class SigkillAtStep(L.Callback):
    """Kills its own process, with no chance to clean up, once `step` optimizer steps are done."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def lfdn(root: Path) -> dict:
    return tiny_lfdn(root / "cache")


def diffusion(root: Path) -> dict:
    return {"class_path": "ood_lightning.training.diffusion.ClassConditionalDiffusion",
            "init_args": {**TINY_UNET, "sample_every_n_epochs": 0, "export_dir": str(root / "unet")}}


MODELS = {"lfdn": (lfdn, 32), "diffusion": (diffusion, 16)}  # model config, image size


def train(root: Path, model: str, *extra: str, callbacks: list | None = None) -> subprocess.CompletedProcess:
    make_model, image_size = MODELS[model]
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 3, "accelerator": "cpu", "default_root_dir": str(root),
                    "enable_progress_bar": False, "enable_model_summary": False, "callbacks": callbacks or [],
                    "limit_val_batches": 1},
        "model": make_model(root),
        "results_dir": str(root),
        "data": {"benchmark": "digits", "image_size": image_size, "batch_size": 16, "train_subset": 64,
                 "eval_subset": 8, "num_workers": 0},
    }
    (root / "config.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, str(REPO / "train.py"), "--config", str(root / "config.yaml"), *extra],
                          cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_sigkill_mid_epoch_then_resume_ends_at_the_uninterrupted_weights(tmp_path, model):
    straight = train(tmp_path / "straight", model)
    assert straight.returncode == 0, straight.stderr[-3000:]

    crashed = tmp_path / "crashed"
    killer = {"class_path": "test_resume.SigkillAtStep", "init_args": {"step": KILL_AT_STEP}}
    killed = train(crashed, model, callbacks=[killer])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = crashed / "lightning_logs" / "version_0" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"]  # one file, nothing partial
    assert not (crashed / "results.json").exists()

    start = {"class_path": "test_resume.RecordStartStep", "init_args": {"path": str(tmp_path / "start_step")}}
    resumed = train(crashed, model, "--ckpt_path", "last", callbacks=[start])  # the same config, without the killer
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"--ckpt_path last: {checkpoints / 'last.ckpt'}" in resumed.stdout + resumed.stderr
    assert (tmp_path / "start_step").read_text() == "4"  # the end of epoch 0, not step 0
    expected = load_checkpoint(tmp_path / "straight" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    got = load_checkpoint(crashed / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt")
    assert (got["epoch"], got["global_step"]) == (expected["epoch"], expected["global_step"]) == (2, 12)
    assert expected["state_dict"].keys() == got["state_dict"].keys()
    for key, value in expected["state_dict"].items():  # the weights and their EMA (LFDN: also the epoch-0 EMA)
        torch.testing.assert_close(got["state_dict"][key], value, rtol=0, atol=0, msg=key)
    if model == "lfdn":
        first = {k: v for k, v in expected["state_dict"].items() if k.startswith("ema_first.")}
        assert first and any(not torch.equal(v, expected["state_dict"]["ema." + k[len("ema_first."):]])
                             for k, v in first.items()), "the epoch-0 EMA must be kept apart from the final EMA"
        assert (crashed / "results.json").is_file()  # the resumed run went on to evaluate


def test_last_without_a_checkpoint_stops_with_what_to_do(tmp_path):
    """Lightning would warn and train from step 0; `last` with nothing to resume is an error naming the folder."""
    (tmp_path / "lightning_logs" / "version_0").mkdir(parents=True)  # a run that died before its first epoch ended
    result = train(tmp_path, "lfdn", "--ckpt_path", "last")
    assert result.returncode != 0
    assert f"--ckpt_path last: no last.ckpt in the run folder {tmp_path}" in result.stderr
    assert not list(tmp_path.glob("lightning_logs/*/checkpoints"))  # nothing trained
