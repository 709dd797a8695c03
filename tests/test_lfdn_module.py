"""LFDN end to end: the LightningModule, its feature cache, the CLI entry points and checkpoint round trips."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from data_helpers import make_class_tree, make_flat, write_corrupt_files

import evaluate
import train
from ood_lightning.backbones import MultiLayerFeatures
from ood_lightning.data import feature_cache as feature_cache_module
from ood_lightning.data.datamodule import OODDataModule
from ood_lightning.data.feature_cache import FeatureInput, cached_features
from ood_lightning.detectors.lfdn import LFDNDetector
from ood_lightning.detectors.lfdn.export import export
from ood_lightning.evaluation import Evaluation


def tiny_detector(tmp_path: Path, **kwargs) -> LFDNDetector:
    """Scored untrained on purpose (allow_untrained): these tests check the evaluation's wiring, not its numbers."""
    backbone = MultiLayerFeatures("tf_efficientnet_lite0", weights=None)
    return LFDNDetector(
        backbone, hidden_dim=64, num_blocks=2, cache_dir=str(tmp_path / "cache"), allow_untrained=True, **kwargs
    )


def scores_of(results_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for f in sorted((results_dir / "scores").glob("*.npz")):
        with np.load(f) as npz:
            out[f.stem] = {k: npz[k] for k in npz.files if k == "index" or (k.startswith("score_") and k != "score_names")}
    return out


def test_scores_do_not_depend_on_batch_size(tmp_path):
    torch.manual_seed(0)
    model = tiny_detector(tmp_path)
    for net in (model.ema, model.ema_first):  # untrained output layers are zero: make the networks do something
        torch.nn.init.normal_(net.proj_out.weight, std=0.2)
    results = {}
    for batch_size in (4, 7):
        out = tmp_path / f"bs{batch_size}"
        dm = OODDataModule("digits", image_size=32, batch_size=batch_size, eval_subset=23)
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
                            callbacks=[Evaluation(out)])
        trainer.test(model, datamodule=dm, verbose=False)
        results[batch_size] = scores_of(out)
    assert results[4].keys() == {"id", "digits_5_9"}
    for name, arrays in results[4].items():
        np.testing.assert_array_equal(arrays["index"], np.arange(23))
        for key, value in arrays.items():
            # same noise, same inputs: only float32 matmul rounding may differ between batch shapes; MSE scores
            # are sums of ~500 squares (~1e3), so 1e-3 absolute is ~1e-6 relative
            np.testing.assert_allclose(results[7][name][key], value, rtol=1e-5, atol=1e-3, err_msg=f"{name}/{key}")
    # LR is the difference of the two networks' scores, with independent noise per network
    id_scores = results[4]["id"]
    np.testing.assert_allclose(id_scores["score_lr_mse"], id_scores["score_mse_epoch0"] - id_scores["score_mse"], rtol=1e-6)


def test_feature_cache_reuses_and_invalidates(tmp_path, monkeypatch):
    calls = []
    real_extract = feature_cache_module.extract
    monkeypatch.setattr(feature_cache_module, "extract", lambda *a, **k: calls.append(1) or real_extract(*a, **k))
    dm = OODDataModule("digits", image_size=32, batch_size=16, eval_subset=10)
    dm.setup("test")
    backbone = MultiLayerFeatures("tf_efficientnet_lite0", weights=None)
    cache = FeatureInput(backbone, str(tmp_path))
    get = lambda c, ds: cached_features(c, ds, dm.loader, torch.device("cpu"), name="id", quiet=True)  # noqa: E731

    first = get(cache, dm.test_sets["id"])
    again = get(cache, dm.test_sets["id"])
    assert len(calls) == 1, "the second request must read the cache, not run the backbone"
    torch.testing.assert_close(first["features"], again["features"])
    assert first["features"].shape == (10, backbone.feature_dim)

    bigger = OODDataModule("digits", image_size=48, batch_size=16, eval_subset=10)
    bigger.setup("test")
    get(cache, bigger.test_sets["id"])
    assert len(calls) == 2, "a new resolution must invalidate the cache"

    other_norm = FeatureInput(MultiLayerFeatures("tf_efficientnet_lite0", weights=None, mean=(0.4,) * 3), str(tmp_path))
    assert other_norm.key != cache.key, "another extractor's features go under another batch key"
    get(other_norm, dm.test_sets["id"])
    assert len(calls) == 3, "a new normalisation must invalidate the cache"
    assert len(list(Path(tmp_path).glob("*.pt"))) == 3


def test_nan_loss_stops_with_the_step(tmp_path):
    model = tiny_detector(tmp_path)
    batch = {model.features.key: torch.full((4, model.backbone.feature_dim), float("nan")), "index": torch.arange(4)}
    model.log = lambda *a, **k: None
    with pytest.raises(FloatingPointError, match="global step"):
        model.training_step(batch, 0)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """Train the real-weights Lite0 LFDN on digits 0-4 (32 px) through train.py, once for this module."""
    root = tmp_path_factory.mktemp("lfdn_run")
    config = yaml.safe_load(Path(train.DEMO_CONFIG).read_text())
    config["trainer"].update(max_epochs=15, default_root_dir=str(root / "runs"), enable_progress_bar=False)
    config["model"]["init_args"].update(hidden_dim=256, num_blocks=2, cache_dir=str(root / "cache"))
    config["data"].update(image_size=32)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    train.main(["--config", str(path)])
    (run,) = (root / "runs" / "lightning_logs").iterdir()
    return root, run


def test_train_py_trains_and_separates_real_digits(demo_run):
    _, run = demo_run
    results = json.loads((run / "results.json").read_text())
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    mse = results["scores"]["mse"]["digits_5_9"]
    assert mse["n_id"] == 300 and mse["n_ood"] == 896
    assert mse["auroc"] > 0.8, f"ID digits must score below OOD digits, got AUROC {mse['auroc']:.3f}"
    assert results["scores"]["mse"]["digits_5_9"]["auroc"] > results["scores"]["mse_epoch0"]["digits_5_9"]["auroc"]


def test_evaluate_py_reproduces_from_checkpoint_and_cache(demo_run, tmp_path):
    root, run = demo_run
    cached = sorted((root / "cache").glob("*.pt"))
    evaluate.main([
        "--config", str(run / "config.yaml"),
        "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
        "--results_dir", str(tmp_path),
    ])
    assert sorted((root / "cache").glob("*.pt")) == cached, "evaluation must reuse the cached features"
    for name, arrays in scores_of(run).items():
        for key, value in arrays.items():
            np.testing.assert_array_equal(scores_of(tmp_path)[name][key], value, err_msg=f"{name}/{key}")


def test_official_layout_export_round_trip(demo_run, tmp_path):
    _, run = demo_run
    first, last = export(str(run / "checkpoints" / "last.ckpt"), str(tmp_path))
    evaluate.main([
        "--config", str(run / "config.yaml"),
        "--model.init_args.official_checkpoints", f"[{first}, {last}]",
        "--results_dir", str(tmp_path / "official"),
    ])
    ours, official = scores_of(run), scores_of(tmp_path / "official")
    for name in ours:
        for key in ours[name]:
            np.testing.assert_allclose(official[name][key], ours[name][key], rtol=1e-6, err_msg=f"{name}/{key}")


def test_unreadable_images_are_counted_in_the_results(tmp_path):
    id_train = make_class_tree(tmp_path / "train", per_class=4, size=(32, 32))
    id_test = make_class_tree(tmp_path / "test", per_class=3, size=(32, 32))
    ood = make_flat(tmp_path / "ood", n=5, size=(32, 32))
    write_corrupt_files(ood)  # a truncated JPEG, a zero-byte file and a text file named .jpg
    dm = OODDataModule("folders", image_size=32, batch_size=4, id_train=str(id_train), id_test=str(id_test),
                       ood={"noise": str(ood)})
    model = tiny_detector(tmp_path)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path,
                        callbacks=[Evaluation(tmp_path / "results")])
    trainer.test(model, datamodule=dm, verbose=False)
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["n_skipped"] == {"id": 0, "noise": 3}
    assert results["scores"]["mse"]["noise"]["n_ood"] == 5
