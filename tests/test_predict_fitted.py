"""Detectors that fit at test time (issue 17): evaluate.py --calibrate saves what they fitted (fitted.pt), and
predict.py / load_detector score with it, giving evaluate.py's scores for the same images (the baselines draw no
noise). Tiny folders of random 32 px images and a random-init ResNet-20: the scores are meaningless and cheap,
agreement is what is checked. Without fitted.pt, or with one fitted under another config, predicting is refused
with a message that says what to run."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from data_helpers import make_class_tree, make_flat

import evaluate
import predict
from ood_lightning import load_detector
from ood_lightning.classifiers import build_classifier
from ood_lightning.data.datamodule import collate
from ood_lightning.detectors.posthoc import PostHocDetector
from ood_lightning.prediction.export import export_detector
from ood_lightning.prediction.fitted import FITTED_FILE, NotFittedError



def _classifier(weights: Path, **init) -> dict:
    return {"class_path": "ood_lightning.detectors.baselines.ClassifierBaselines",
            "init_args": {"classifier": "cifar_resnet20", "classifier_weights": str(weights), **init}}


def _baselines(weights: Path) -> dict:
    return _classifier(weights, scores=["msp", "knn", "vim"], knn_k=2, vim_dim=8)


def _fusion(weights: Path) -> dict:
    return {"class_path": "ood_lightning.detectors.fusion.CascadeFusion", "init_args": {
        "baseline": _classifier(weights, scores=["mls"]), "refiner": _classifier(weights, scores=["knn"], knn_k=2),
        "baseline_score": "mls", "refiner_score": "knn", "quantiles": [0.2, 0.8], "validation_size": 4}}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fitted_data")
    make_class_tree(root / "train", per_class=7, size=(32, 32))
    make_class_tree(root / "test", per_class=3, size=(32, 32))
    make_flat(root / "noise", n=4, size=(32, 32))
    torch.manual_seed(0)  # a weight file, not a random init: load_detector builds without seeding
    torch.save(build_classifier("cifar_resnet20", None, 10).net.state_dict(), root / "resnet20.th")
    return root


def _evaluate(model: dict, data: Path, run: Path) -> Path:
    """evaluate.py --calibrate true on the folders benchmark; the run folder (no logger) holds everything."""
    config = {"seed_everything": 0, "model": model,
              "trainer": {"accelerator": "cpu", "default_root_dir": str(run), "logger": False,
                          "enable_progress_bar": False, "enable_model_summary": False},
              "data": {"benchmark": "folders", "root": str(data), "id_train": "train", "id_test": "test",
                       "ood": {"noise": "noise"}, "image_size": 32, "batch_size": 4},
              "plots": False, "calibrate": True, "calibration_size": 4}
    run.mkdir(parents=True)
    (run.parent / f"{run.name}.yaml").write_text(yaml.safe_dump(config))
    evaluate.main(["--config", str(run.parent / f"{run.name}.yaml")])
    assert (run / FITTED_FILE).is_file() and (run / "calibration.json").is_file() and (run / "config.yaml").is_file()
    return run


@pytest.fixture(scope="module")
def baselines_run(data, tmp_path_factory) -> Path:
    return _evaluate(_baselines(data / "resnet20.th"), data, tmp_path_factory.mktemp("runs") / "baselines")


@pytest.fixture(scope="module")
def fusion_run(data, tmp_path_factory) -> Path:
    return _evaluate(_fusion(data / "resnet20.th"), data, tmp_path_factory.mktemp("runs") / "fusion")


def _evaluated(run: Path) -> dict[str, dict[str, float]]:
    """evaluate.py's score per score type per image path, over every test set."""
    scores = {}
    for file in (run / "scores").glob("*.npz"):
        with np.load(file) as npz:
            for key in npz.files:
                if key.startswith("score_"):
                    for path, value in zip(npz["path"], npz[key]):
                        scores.setdefault(key[len("score_"):], {})[str(Path(path).resolve())] = float(value)
    return scores


def _predict(run: Path, data: Path, out: Path, *extra: str) -> list[dict]:
    paths = sorted(str(p) for folder in ("test", "noise") for p in (data / folder).rglob("*.png"))
    listing = out / "images.txt"
    out.mkdir(parents=True, exist_ok=True)
    listing.write_text("\n".join(paths) + "\n")
    predict.main(["--run", str(run), "--images", str(listing), "--out_dir", str(out),
                  "--trainer.enable_progress_bar", "false", *extra])
    with open(out / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("which", ["baselines", "fusion"])
def test_predict_and_load_detector_give_evaluates_scores(which, baselines_run, fusion_run, data, tmp_path):
    run = {"baselines": baselines_run, "fusion": fusion_run}[which]
    evaluated = _evaluated(run)
    assert set(evaluated) == ({"msp", "knn", "vim"} if which == "baselines" else {"mls", "knn+mls"})
    rows = _predict(run, data, tmp_path)
    assert len(rows) == 10 and not any(row["error"] for row in rows)
    det = load_detector(run)
    api = det.score([row["path"] for row in rows])
    for name, by_path in evaluated.items():
        expected = np.array([by_path[str(Path(row["path"]).resolve())] for row in rows])
        np.testing.assert_allclose([float(row[name]) for row in rows], expected, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(api[name], expected, rtol=1e-5, atol=1e-6, err_msg=name)
        assert f"ood_{name}" in rows[0]  # calibrated: decisions are made
    if which == "fusion":
        fusion = json.loads((run / "results.json").read_text())["fusion"]
        assert (det.model.low, det.model.high) == (fusion["low"], fusion["high"])
        assert len(det.model.refiner.knn_bank) == 10  # 14 train files less 4 held out for calibration


def test_the_export_carries_the_fit(baselines_run, data, tmp_path):
    export_detector(baselines_run, tmp_path / "export")
    assert (tmp_path / "export" / FITTED_FILE).is_file()
    images = [str(p) for p in sorted((data / "noise").glob("*.png"))]
    exported, run = load_detector(tmp_path / "export").score(images), load_detector(baselines_run).score(images)
    for name in ("knn", "vim"):
        np.testing.assert_array_equal(exported[name], run[name])


def test_without_fitted_pt_predict_says_to_run_evaluate(baselines_run, data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(baselines_run, run)
    (run / FITTED_FILE).unlink()
    with pytest.raises(NotFittedError, match=r"evaluate\.py --config .*config\.yaml --calibrate true"):
        load_detector(run)
    with pytest.raises(NotFittedError, match="no fitted.pt holds its fit"):
        _predict(run, data, tmp_path / "out")


def test_a_fit_of_another_config_is_refused(baselines_run, data, tmp_path):
    with pytest.raises(ValueError, match="fitted under another configuration"):
        _predict(baselines_run, data, tmp_path, "--model.init_args.knn_k", "3")
    with pytest.raises(ValueError, match="fitted under another configuration"):
        _predict(baselines_run, data, tmp_path, "--data.train_subset", "5")
    rows = _predict(baselines_run, data, tmp_path, "--data.batch_size", "3")  # how it is served does not matter
    assert len(rows) == 10


def test_posthoc_fit_is_restored_from_its_state():
    """pytorch-ood keeps fits in objects of its own (KNN: an sklearn index): the state is the fit's inputs, and a
    new detector refits from them to the same scores."""
    from test_posthoc import SPEC, _images, _loader, _samples

    detectors = {"knn": {"class_path": "KNN", "init_args": {"k": 3}}, "vim": {"class_path": "ViM",
                                                                         "init_args": {"d": 4}},
                 "energy": {"class_path": "EnergyBased"}}
    torch.manual_seed(0)
    fitted = PostHocDetector(detectors, SPEC, None)
    fitted.fit(_samples(*_images(30, seed=1)), _loader, progress=False)
    state = fitted.fitted_state()
    assert state["detectors"] == ["knn", "vim"]
    torch.manual_seed(0)  # the same random classifier (ViM reads the head at construction)
    fresh = PostHocDetector(detectors, SPEC, None)
    assert fresh.needs_fit
    fresh.load_fitted_state(state)
    assert not fresh.needs_fit
    batch = collate(_samples(*_images(8, seed=2)))
    for name, value in fitted.score(batch, "t").items():
        torch.testing.assert_close(fresh.score(batch, "t")[name], value, msg=name)
