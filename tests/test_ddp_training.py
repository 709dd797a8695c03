"""DDP training is data-parallel for real: train.py on 2 CPU processes (gloo) with batch B per process ends at the
weights of 1 process with batch 2B on the same samples, and the feature cache is computed once, by one process.

The released LFDN code launched several processes without synchronising gradients; Lightning's DDP averages them.
Both runs train a tiny LFDN on a random-init EfficientNet-Lite0 (64 digits, 4 steps per epoch, 2 epochs, so the
second epoch's order and the epoch-0 EMA are covered too). Each run is a subprocess with one thread per process.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from ood_lightning.backbones import MultiLayerFeatures
from ood_lightning.io import load_checkpoint
from script_runs import REPO, script_env, tiny_lfdn

N_TRAIN, N_EVAL, GLOBAL_BATCH = 64, 8, 16


class CountingFeatures(MultiLayerFeatures):
    """MultiLayerFeatures that appends "<pid> <images>" to $FEATURE_PASSES for every forward pass."""

    def forward(self, images):
        with open(os.environ["FEATURE_PASSES"], "a") as log:
            log.write(f"{os.getpid()} {len(images)}\n")
        return super().forward(images)


def _launch(root: Path, devices: int) -> subprocess.Popen:
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "devices": devices, "default_root_dir": str(root),
                    "logger": False, "enable_progress_bar": False, "enable_model_summary": False},
        "model": tiny_lfdn(root / "cache", backbone="test_ddp_training.CountingFeatures"),
        "results_dir": str(root),
        "calibration_size": 0,  # calibration scores held-out images apart from the cache; this test counts cache passes
        "data": {"benchmark": "digits", "image_size": 32, "batch_size": GLOBAL_BATCH // devices,
                 "train_subset": N_TRAIN, "eval_subset": N_EVAL, "num_workers": 0},
    }
    if devices > 1:
        config["trainer"]["strategy"] = "ddp"
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    env = script_env(FEATURE_PASSES=str(root / "feature_passes.txt"))
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), "--config", str(root / "config.yaml")],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# Two processes sum a batch's gradients in another order than one process does, and AdamW divides each gradient by
# its running magnitude, which turns rounding in the near-zero gradients of the zero-initialised output layer into
# visible weight differences. Largest measured (2 runs of this test's setup): 4.2e-6 with torch's default CPU kernels
# (ATEN_CPU_CAPABILITY=default), within 1e-6 with AVX2. The tolerance is 5x the largest; one AdamW step moves a
# weight by up to lr = 1e-4, and a wrong training order or noise changes every step.
DDP_ATOL = 2e-5


def test_two_processes_of_batch_b_train_the_weights_of_one_process_of_batch_2b(tmp_path):
    runs = {devices: _launch(tmp_path / f"devices{devices}", devices) for devices in (1, 2)}
    for devices, proc in runs.items():
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{devices}-process run failed:\n{log[-4000:]}"

    single, ddp = (load_checkpoint(tmp_path / f"devices{d}" / "checkpoints" / "last.ckpt") for d in (1, 2))
    assert single["global_step"] == ddp["global_step"] == 2 * N_TRAIN // GLOBAL_BATCH
    assert single["state_dict"].keys() == ddp["state_dict"].keys()
    for key, value in single["state_dict"].items():  # net, EMA and epoch-0 EMA
        if key.startswith(("net.", "ema.", "ema_first.")):
            torch.testing.assert_close(ddp["state_dict"][key], value, rtol=1e-5, atol=DDP_ATOL, msg=key)
    weights = single["state_dict"]
    assert any(not torch.equal(weights[k], weights["ema_first." + k[len("net."):]]) for k in weights
               if k.startswith("net.")), "the weights must have trained past the epoch-0 EMA, or this proves nothing"

    # the feature cache (train set, then the two test sets) was computed once, by the launching process alone
    passes = [line.split() for line in (tmp_path / "devices2" / "feature_passes.txt").read_text().splitlines()]
    assert {int(pid) for pid, _ in passes} == {runs[2].pid}
    assert sum(int(n) for _, n in passes) == N_TRAIN + 2 * N_EVAL
    assert len(list((tmp_path / "devices2" / "cache").glob("*.pt"))) == 3
