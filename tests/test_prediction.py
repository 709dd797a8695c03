"""Scoring new images (issue 17): a tiny LFDN trained by train.py on a folders benchmark with in-distribution images
only (so it also calibrates there), then predict.py, load_detector and the export on a folder with a broken file.

One trained run serves every test (module fixture, about 10 s). A random-init EfficientNet-Lite0 (weights null) at
32 px keeps it fast; the LFDN trains 2 epochs at lr 1e-2, so its output layers are not zero and scores depend on
the weights. Subprocesses (DDP) run with one thread each, so float32 arithmetic is identical across runs.
"""
import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from script_runs import REPO, script_env, tiny_lfdn

import predict
import train
from ood_lightning import load_detector
from ood_lightning.data.sources import DigitsSource
from ood_lightning.prediction.calibration import NoCalibrationError, read_calibration
from ood_lightning.prediction.export import export_detector

N_TRAIN, N_CALIBRATION, N_NEW = 40, 12, 9


def _digit_images(folder: Path, digits: range, count: int, split: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    source = DigitsSource(digits, split=split)
    paths = []
    for i in range(count):
        paths.append(folder / f"{i:03d}.png")
        source._image(i).resize((16, 16)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """train.py on folders with id_train only: trains, calibrates on held-out train files, runs no test."""
    tmp = tmp_path_factory.mktemp("prediction")
    _digit_images(tmp / "train", range(5), N_TRAIN, "train")
    model = tiny_lfdn(tmp / "cache")
    model["init_args"]["lr"] = 1e-2
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_epochs": 2, "default_root_dir": str(tmp / "runs"),
                    "enable_progress_bar": False, "enable_model_summary": False},
        "model": model,
        "data": {"benchmark": "folders", "id_train": str(tmp / "train"), "image_size": 32, "batch_size": 8},
        "calibration_size": N_CALIBRATION,
    }
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    train.main(["--config", str(tmp / "config.yaml")])
    folder = tmp / "runs" / "lightning_logs" / "version_0"
    assert (folder / "checkpoints" / "last.ckpt").is_file() and not (folder / "results.json").exists()
    return folder


@pytest.fixture(scope="module")
def new_images(run) -> Path:
    """ID digits and OOD digits in one folder, plus a file that is no image."""
    folder = run.parent.parent.parent / "new"
    _digit_images(folder / "a_id", range(5), 4, "test")
    _digit_images(folder / "b_ood", range(5, 10), 4, "test")
    (folder / "b_ood" / "broken.png").write_bytes(b"not an image")
    return folder


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _column(rows: list[dict], name: str) -> np.ndarray:
    return np.array([float(row[name]) if row[name] else np.nan for row in rows])


def test_folders_without_ood_trains_and_calibrates_on_train_files_only(run):
    calibration = read_calibration(run)
    assert calibration["n_id"] == N_CALIBRATION and calibration["target_tpr"] == 0.95
    assert set(calibration["scores"]) == {"mse", "mfsim", "lr_mse", "lr_mfsim", "mse_epoch0", "mfsim_epoch0"}
    # the calibration scores, recomputed from the held-out files, reproduce the stored threshold's TPR
    from ood_lightning.data import OODDataModule
    from ood_lightning.data.sources import sample_path
    dm = OODDataModule("folders", id_train=str(run.parents[2] / "train"), image_size=32)
    dm.calibration_size = N_CALIBRATION
    dm.build_sets()
    held_out = [sample_path(dm.calibration_set, i) for i in range(len(dm.calibration_set))]
    fitted = {sample_path(dm.train_set, i) for i in range(len(dm.train_set))}
    assert len(held_out) == N_CALIBRATION and not fitted & set(held_out)
    scores = load_detector(run).score(held_out)
    for name, entry in calibration["scores"].items():
        assert np.mean(scores[name] <= entry["threshold"]) == pytest.approx(entry["tpr"])
        assert entry["tpr"] >= 0.95


def test_predict_writes_a_row_per_file_in_order_with_the_unreadable_one(run, new_images, tmp_path):
    predict.main(["--run", str(run), "--images", str(new_images), "--out_dir", str(tmp_path),
                  "--trainer.enable_progress_bar", "false"])
    rows = _read_csv(tmp_path / "predictions.csv")
    files = sorted(p.relative_to(new_images).as_posix() for p in new_images.rglob("*.png"))
    assert [Path(row["path"]).relative_to(new_images).as_posix() for row in rows] == files
    broken = [row for row in rows if row["path"].endswith("broken.png")]
    assert len(broken) == 1 and "cannot decode image" in broken[0]["error"] and broken[0]["mse"] == ""
    threshold = read_calibration(run)["scores"]["mse"]["threshold"]
    for row in rows:
        if not row["error"]:
            assert row["ood_mse"] == str(int(float(row["mse"]) > threshold))
    assert (tmp_path / "contact_sheet.png").is_file()


def test_python_api_equals_the_cli_and_a_score_depends_on_the_image_only(run, new_images, tmp_path):
    predict.main(["--run", str(run), "--images", str(new_images), "--out_dir", str(tmp_path),
                  "--trainer.enable_progress_bar", "false"])
    rows = _read_csv(tmp_path / "predictions.csv")
    det = load_detector(run)
    scores = det.score([row["path"] for row in rows])
    for name in det.score_names:
        np.testing.assert_array_equal(scores[name], _column(rows, name))
    flagged = det.predict([row["path"] for row in rows])["mse"]
    assert flagged.tolist() == [row["ood_mse"] == "1" for row in rows]
    # the same image alone, as a PIL image, in another folder and batch: the same score
    first = rows[3]["path"]
    copy = tmp_path / "elsewhere" / "renamed.png"
    copy.parent.mkdir()
    shutil.copy(first, copy)
    alone = det.score([Image.open(copy)])["mse"][0]
    det.batch_size = 2
    paired = det.score([rows[5]["path"], str(copy)])["mse"][1]
    # equal noise; the backbone's float32 sums differ in the last bits between batch shapes (another noise draw
    # would move the score by far more: see test_noise_is_keyed_by_content)
    assert alone == pytest.approx(scores["mse"][3], rel=1e-5) and paired == pytest.approx(alone, rel=1e-5)


def test_the_export_scores_as_the_run(run, new_images, tmp_path):
    path = export_detector(run, tmp_path / "export")
    images = sorted(str(p) for p in new_images.rglob("*.png"))
    exported, original = load_detector(path.parent), load_detector(run)
    for name in original.score_names:
        np.testing.assert_array_equal(exported.score(images)[name], original.score(images)[name])
    assert exported.calibration == original.calibration
    from safetensors import safe_open
    with safe_open(str(tmp_path / "export" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not any(key.startswith("net.") for key in keys) and any(key.startswith("ema.") for key in keys)


def test_without_calibration_predict_says_how_and_the_api_refuses(run, new_images, tmp_path, capsys):
    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    (bare / "calibration.json").unlink()
    predict.main(["--run", str(bare), "--images", str(new_images), "--out_dir", str(tmp_path / "out"),
                  "--trainer.enable_progress_bar", "false"])
    assert "--calibrate true" in capsys.readouterr().out
    assert not any(column.startswith("ood_") for column in _read_csv(tmp_path / "out" / "predictions.csv")[0])
    with pytest.raises(NoCalibrationError, match="evaluate.py --config CONFIG"):
        load_detector(bare).predict([str(next(new_images.rglob("*.png")))])


def test_ddp_predict_with_two_processes_equals_one(run, new_images, tmp_path):
    """Batch size 1, so both runs compute each image in the same batch shape: the files are then byte-identical
    (with larger batches the two runs batch different images together, and the last float32 bits may differ)."""
    outputs = {}
    for devices in (1, 2):
        out = tmp_path / f"devices{devices}"
        args = [sys.executable, str(REPO / "predict.py"), "--run", str(run), "--images", str(new_images),
                "--out_dir", str(out), "--trainer.accelerator", "cpu", "--trainer.devices", str(devices),
                "--trainer.enable_progress_bar", "false", "--data.batch_size", "1"]
        if devices > 1:
            args += ["--trainer.strategy", "ddp"]
        done = subprocess.run(args, cwd=str(tmp_path), env=script_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        outputs[devices] = (out / "predictions.csv").read_text()
    assert outputs[1] == outputs[2]
    assert outputs[1].count("\n") == 1 + 9  # header, 8 images and the broken file, each once


def test_noise_is_keyed_by_content():
    import torch

    from ood_lightning.noise import content_keys, noise_keys
    images = torch.rand(3, 3, 8, 8)
    keys = content_keys(images)
    assert torch.equal(content_keys(images[[2, 0]]), keys[[2, 0]])  # position and batch do not matter
    assert len(set(keys.tolist())) == 3 and bool((keys >= 0).all())
    changed = images.clone()
    changed[0, 0, 0, 0] += 1e-3
    assert content_keys(changed)[0] != keys[0]
    assert torch.equal(noise_keys({"index": torch.arange(3), "noise_key": keys}), keys)
    assert torch.equal(noise_keys({"index": torch.arange(3)}), torch.arange(3))  # evaluate.py keeps its keying
