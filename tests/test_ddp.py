"""DDP equivalence: evaluate.py on 2 CPU processes (gloo) gives exactly the results of 1 process.

51 samples per test set over 2 ranks: the DistributedSampler gives each rank 26, repeating one sample, so this also
checks the de-duplication by index. The detector is a tiny LFDN on a random-init EfficientNet-Lite0 at 32 px (random
init is explicit: weights null), trained for a few steps here so that its output layers are no longer zero (an
untrained LFDN predicts x0 = 0 whatever its weights) and both runs score the checkpoint's weights (--ckpt_path): a
process scoring other weights than the checkpoint's would change the scores. Each evaluation is a subprocess, so
the test process never initialises torch.distributed. Both runs use one thread per process (OMP_NUM_THREADS=1), so
float32 arithmetic is identical and the comparison is exact.
"""
import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch
from script_runs import REPO, script_env, tiny_lfdn

from ood_lightning.backbones import MultiLayerFeatures
from ood_lightning.data import OODDataModule
from ood_lightning.detectors.lfdn import LFDNDetector

N = 51  # odd: the sampler pads


def _config(root: Path, cache: Path) -> dict:
    return {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "default_root_dir": str(root), "enable_progress_bar": False,
                    "enable_model_summary": False},
        "model": tiny_lfdn(cache),
        "data": {"benchmark": "digits", "image_size": 32, "batch_size": 8, "eval_subset": N},
        "plots": False,
    }


def _trained_checkpoint(tmp: Path) -> Path:
    """The tiny LFDN of the config after 2 epochs of 2 steps (lr 1e-2), in one process: every network's output layer
    (raw, EMA, first-epoch EMA) is non-zero, so the scores depend on the weights."""
    torch.manual_seed(0)
    init = tiny_lfdn(tmp / "cache_train")["init_args"]
    model = LFDNDetector(MultiLayerFeatures("tf_efficientnet_lite0", weights=None), hidden_dim=init["hidden_dim"],
                         num_blocks=init["num_blocks"], lr=1e-2, cache_dir=init["cache_dir"])
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp / "train")
    trainer.fit(model, datamodule=OODDataModule("digits", image_size=32, batch_size=8, train_subset=16))
    for net in (model.net, model.ema, model.ema_first):
        assert net.proj_out.weight.abs().max() > 1e-3
    assert not torch.equal(model.ema.proj_out.weight, model.ema_first.proj_out.weight)
    path = tmp / "trained.ckpt"
    trainer.save_checkpoint(path)
    return path


def _launch(tmp: Path, name: str, devices: int, ckpt: Path) -> tuple[subprocess.Popen, Path]:
    root = tmp / name
    root.mkdir()
    cfg = root / "config.json"
    cfg.write_text(json.dumps(_config(root, tmp / f"cache_{name}")))
    args = [sys.executable, str(REPO / "evaluate.py"), "--config", str(cfg), "--trainer.devices", str(devices),
            "--ckpt_path", str(ckpt)]
    if devices > 1:
        args += ["--trainer.strategy", "ddp"]
    proc = subprocess.Popen(args, cwd=str(tmp), env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    return proc, root


def test_two_processes_equal_one(tmp_path):
    ckpt = _trained_checkpoint(tmp_path)
    runs = {"single": _launch(tmp_path, "single", 1, ckpt), "ddp": _launch(tmp_path, "ddp", 2, ckpt)}
    out = {}
    for name, (proc, root) in runs.items():
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} run failed:\n{log[-4000:]}"
        assert "Traceback" not in log, log[-4000:]
        # no results_dir: results go to the logger's run folder (found on every rank, see Evaluation.output_dir)
        run_dir = root / "lightning_logs" / "version_0"
        out[name] = (json.loads((run_dir / "results.json").read_text()), run_dir)

    (single, single_dir), (ddp, ddp_dir) = out["single"], out["ddp"]
    assert (single["world_size"], ddp["world_size"]) == (1, 2)
    assert single["config_hash"] == ddp["config_hash"]  # devices and output folders are not part of the hash
    assert single["n_id"] == ddp["n_id"] == N
    assert single["n_skipped"] == ddp["n_skipped"] == {"id": 0, "digits_5_9": 0}
    assert ddp["scores"]["mse"]["digits_5_9"]["n_ood"] == N  # the padded duplicate was dropped
    assert list(ddp["scores"]) == ["mse", "mfsim", "lr_mse", "lr_mfsim", "mse_epoch0", "mfsim_epoch0"]
    assert ddp["scores"] == single["scores"]  # every metric, exactly

    for name in ("id", "digits_5_9"):
        with np.load(single_dir / "scores" / f"{name}.npz") as a, np.load(ddp_dir / "scores" / f"{name}.npz") as b:
            assert sorted(a.files) == sorted(b.files)
            np.testing.assert_array_equal(a["index"], np.arange(N))
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}.npz {key}")
            assert (a["label"] >= 0).all() if name == "id" else (a["label"] == -1).all()

    # the feature cache was written once per set, atomically (no temporary files left)
    cache = sorted(p.name for p in (tmp_path / "cache_ddp").iterdir())
    assert len(cache) == 2 and all(p.endswith(".pt") for p in cache), cache
