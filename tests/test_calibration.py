"""Calibrated thresholds: set on held-out in-distribution train images only, and reproducing their target TPR."""
import numpy as np
import pytest
from PIL import Image

from ood_lightning.data import OODDataModule
from ood_lightning.data.datamodule import calibration_split
from ood_lightning.data.sources import DigitsSource, sample_path
from ood_lightning.prediction.calibration import (NoCalibrationError, calibrate_scores, calibrated_rates, decisions,
                                                  read_calibration, threshold_at_tpr, threshold_from_quantiles)


@pytest.mark.parametrize("tpr", [0.5, 0.9, 0.95, 0.99, 1.0])
@pytest.mark.parametrize("n", [1, 7, 40, 1001])
def test_the_threshold_reproduces_its_tpr_on_the_calibration_scores(tpr, n):
    scores = np.random.default_rng(n).normal(size=n)
    threshold = threshold_at_tpr(scores, tpr)
    kept = np.mean(scores <= threshold)
    assert kept >= tpr - 1e-12 and kept - 1 / n < tpr  # the smallest threshold that keeps tpr of them
    assert threshold in scores


def test_calibration_file_content_and_moved_operating_point():
    scores = {"a": np.arange(100.0), "b": -np.arange(100.0)}
    cal = calibrate_scores(scores, 0.95, n_id=100, seed=3, config_hash="h")
    assert cal["scores"]["a"]["threshold"] == 94.0 and cal["scores"]["a"]["tpr"] == 0.95
    assert cal["n_id"] == 100 and cal["seed"] == 3 and cal["config_hash"] == "h"
    assert threshold_from_quantiles(cal, "a", 0.95) == cal["scores"]["a"]["threshold"]
    assert threshold_from_quantiles(cal, "a", 0.9) == 89.0
    flagged = decisions({"a": np.array([94.0, 94.5])}, cal)["a"]
    assert flagged.tolist() == [False, True]
    rates = calibrated_rates(cal, {"id": {"scores": {"a": np.arange(10.0)}},
                                   "far": {"scores": {"a": np.array([1.0, 95.0, 200.0, 3.0])}}}, "id")
    assert rates["a"]["id_tpr"] == 1.0 and rates["a"]["detected/far"] == 0.5


def test_calibration_images_are_train_files_the_detector_is_not_fit_on(tmp_path):
    for folder, count in (("train/cat", 30), ("train/dog", 30), ("test/cat", 3), ("test/dog", 2), ("ood", 5)):
        (tmp_path / folder).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i * 7 % 256, 0, 0)).save(tmp_path / folder / f"{i}.png")
    dm = OODDataModule("folders", root=str(tmp_path), id_train="train", id_test="test", ood={"ood": "ood"},
                       image_size=8, train_subset=40)
    dm.build_sets()
    fitted = {sample_path(dm.train_set, i) for i in range(len(dm.train_set))}
    calibration = {sample_path(dm.calibration_set, i) for i in range(len(dm.calibration_set))}
    assert len(fitted) == 40 and len(calibration) == 20  # all 20 the subset leaves out, the train set unchanged
    assert not fitted & calibration
    assert all("/train/" in path for path in calibration)  # never a test or OOD image
    tests = {sample_path(dm.test_sources[name], i) for name in dm.test_sources for i in range(5)}
    assert not tests & calibration


def test_an_explicit_size_holds_images_out_of_training():
    train = DigitsSource(range(5), split="train")
    fitted, calibration = calibration_split(train, None, 50, seed=0)
    assert len(calibration) == 50 and len(fitted) == len(train) - 50
    assert not set(fitted.indices) & set(calibration.indices)
    same, none = calibration_split(train, None, None, seed=0)
    assert same is train and none is None  # default: nothing left out, nothing held out, training unchanged
    again = calibration_split(train, None, 50, seed=0)[1]
    assert again.indices == calibration.indices  # seeded


def test_no_calibration_is_a_clear_error_that_says_how_to_calibrate(tmp_path):
    with pytest.raises(NoCalibrationError, match="--calibrate true") as error:
        read_calibration(tmp_path)
    assert str(tmp_path / "calibration.json") in str(error.value) and "train.py" in str(error.value)
