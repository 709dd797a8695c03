"""DDP equivalence: evaluate.py on 2 CPU processes (gloo) gives exactly the results of 1 process.

51 samples per test set over 2 ranks: the DistributedSampler gives each rank 26, repeating one sample, so this also
checks the de-duplication by index. The detector is an untrained LFDN on a random-init EfficientNet-Lite0 at 32 px
(random init is explicit: weights null): scores are meaningless but deterministic, which is all this test needs.
Each run is a subprocess, so the test process never initialises torch.distributed. Both runs use one thread per
process (OMP_NUM_THREADS=1), so float32 arithmetic is identical and the comparison is exact.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from script_runs import REPO, script_env, tiny_lfdn

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


def _launch(tmp: Path, name: str, devices: int) -> tuple[subprocess.Popen, Path]:
    root = tmp / name
    root.mkdir()
    cfg = root / "config.json"
    cfg.write_text(json.dumps(_config(root, tmp / f"cache_{name}")))
    args = [sys.executable, str(REPO / "evaluate.py"), "--config", str(cfg), "--trainer.devices", str(devices)]
    if devices > 1:
        args += ["--trainer.strategy", "ddp"]
    proc = subprocess.Popen(args, cwd=str(tmp), env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    return proc, root


def test_two_processes_equal_one(tmp_path):
    runs = {"single": _launch(tmp_path, "single", 1), "ddp": _launch(tmp_path, "ddp", 2)}
    out = {}
    for name, (proc, root) in runs.items():
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} run failed:\n{log[-4000:]}"
        assert "Traceback" not in log, log[-4000:]
        # no results_dir: results go to the logger's run folder (found on every rank, see OODDetector.output_dir)
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
