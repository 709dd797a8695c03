"""The evaluation as its own part: a detector that only scores (and shows one picture) runs through evaluate.py and
gets every results file; the evaluation collects exactly the scores the detector returned."""
import json

import numpy as np
import torch
import yaml

import evaluate
from ood_lightning.data import OODDataModule
from ood_lightning.detectors.base import OODDetector

N = 6  # images per test set


class Brightness(OODDetector):
    """Scores an image by its mean brightness and shows the first ID batch; it knows nothing of files."""

    score_names = ("brightness",)

    def score(self, batch: dict, dataset: str) -> dict:
        images = batch["image"].float()
        if dataset == "id" and not getattr(self, "_shown", False):
            self._shown = True
            self.show("first_id_batch", images[0], caption="an ID image")
        return {"brightness": images.mean((1, 2, 3))}


def _evaluate(tmp_path, *extra):
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "default_root_dir": str(tmp_path / "runs"), "enable_progress_bar": False,
                    "logger": False},
        "model": {"class_path": f"{__name__}.Brightness"},
        "data": {"benchmark": "digits", "image_size": 16, "eval_subset": N, "batch_size": 4},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    evaluate.main(["--config", str(tmp_path / "config.yaml"), *extra])


def test_a_detector_that_writes_nothing_gets_its_results_files(tmp_path):
    out = tmp_path / "results"
    _evaluate(tmp_path, "--results_dir", str(out))
    results = json.loads((out / "results.json").read_text())
    assert results["detector"] == "Brightness" and results["n_id"] == N and results["ood_sets"] == ["digits_5_9"]
    for name in ("results.csv", "results.md", "scores/id.npz", "scores/digits_5_9.npz", "plots/hist_brightness.png",
                 "plots/roc_brightness.png", "grids/first_id_batch.png"):
        assert (out / name).is_file(), name
    assert not (tmp_path / "runs" / "results.json").exists()  # --results_dir, not the run folder
    dm = OODDataModule("digits", image_size=16, eval_subset=N)
    dm.setup("test")
    for name, dataset in dm.test_sets.items():  # the collected scores are the detector's, sample by sample
        with np.load(out / "scores" / f"{name}.npz") as scores:
            np.testing.assert_array_equal(scores["index"], np.arange(N))
            expected = [dataset[i]["image"].mean().item() for i in range(N)]
            np.testing.assert_allclose(scores["score_brightness"], expected, rtol=1e-6)
            assert (scores["label"] >= 0).all() if name == "id" else (scores["label"] == -1).all()


def test_plots_off_and_the_run_folder_by_default(tmp_path):
    _evaluate(tmp_path, "--plots", "false")
    assert (tmp_path / "runs" / "results.json").is_file() and (tmp_path / "runs" / "results.csv").is_file()
    assert not (tmp_path / "runs" / "plots").exists()


def test_test_step_returns_the_scores_for_the_evaluation():
    model = Brightness()
    images = torch.rand(3, 3, 4, 4)
    assert model.score({"image": images}, "ood")["brightness"].shape == (3,)
    assert model.shown == []  # only the ID set is shown
    model.score({"image": images}, "id")
    (name, grid, caption), = model.shown
    assert name == "first_id_batch" and grid.shape == (3, 4, 4) and caption == "an ID image"


def test_calibrate_sets_thresholds_on_train_images_and_the_results_report_them(tmp_path, capsys):
    out = tmp_path / "results"
    _evaluate(tmp_path, "--results_dir", str(out), "--plots", "false", "--data.train_subset", "20",
              "--calibrate", "true", "--calibration_size", "30")
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["n_id"] == 30 and calibration["detector"] == "Brightness"
    threshold = calibration["scores"]["brightness"]["threshold"]
    results = json.loads((out / "results.json").read_text())
    block = results["calibrated"]["scores"]["brightness"]
    with np.load(out / "scores" / "id.npz") as id_scores, np.load(out / "scores" / "digits_5_9.npz") as ood:
        assert block["id_tpr"] == np.mean(id_scores["score_brightness"] <= threshold)
        assert block["detected/digits_5_9"] == np.mean(ood["score_brightness"] > threshold)
        assert len(id_scores["path"]) == N and all("#" in str(path) for path in id_scores["path"])  # in memory
    assert "At the calibrated thresholds" in capsys.readouterr().out
    _evaluate(tmp_path, "--results_dir", str(out), "--plots", "false")  # a later evaluation finds it
    assert json.loads((out / "results.json").read_text())["calibrated"]["scores"]["brightness"] == block
    _evaluate(tmp_path, "--results_dir", str(tmp_path / "elsewhere"), "--plots", "false")
    assert "No calibration.json for this run" in capsys.readouterr().out
