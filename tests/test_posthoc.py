"""PostHocDetector: pytorch-ood's detectors in our evaluator give the scores pytorch-ood gives on the same batches
(fitted: ViM, Mahalanobis; unfitted: Energy, ASH on feature maps, ODIN with input gradients), independent of the
batch size; fitting is required where pytorch-ood requires it; configuration errors are named; and the adapter
serves as the cascade's baseline through the evaluator. The classifier is a tiny random CNN given by class_path
(a user's own nn.Module), so the scores are meaningless and cheap; agreement is what is checked."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from pytorch_ood.detector import ASH, ODIN, EnergyBased, Mahalanobis, ReAct, ViM
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ood_lightning.cli import make_cli
from ood_lightning.data.datamodule import collate
from ood_lightning.detectors.base import OODDetector
from ood_lightning.detectors.posthoc import PostHocDetector


class TinyCNN(nn.Module):
    """conv -> BN -> ReLU maps, global pool, linear head: the smallest classifier with maps, features and a head."""

    def __init__(self, num_classes: int = 4, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.body(x)).flatten(1))


SPEC = {"class_path": f"{__name__}.TinyCNN", "init_args": {"num_classes": 4}, "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25], "feature_maps_layer": "body", "cam_layer": "body"}
DETECTORS = {
    "vim": {"class_path": "ViM", "init_args": {"d": 4}},
    "mahalanobis": {"class_path": "pytorch_ood.detector.Mahalanobis"},
    "energy": {"class_path": "EnergyBased", "init_args": {"t": 2.0}},
    "ash": {"class_path": "ASH", "init_args": {"variant": "ash-s", "percentile": 0.6}},
    "odin": {"class_path": "ODIN", "init_args": {"eps": 0.002, "temperature": 100.0}},
}


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.arange(n) % 4


def _samples(images, labels) -> list[dict]:
    return [{"image": x, "label": int(y), "index": i} for i, (x, y) in enumerate(zip(images, labels))]


def _loader(ds):
    return DataLoader(ds, batch_size=16, collate_fn=collate)


@pytest.fixture(scope="module")
def fitted() -> PostHocDetector:
    torch.manual_seed(0)
    det = PostHocDetector(DETECTORS, SPEC, None)
    det.fit(_samples(*_images(40, seed=1)), _loader, progress=False)
    return det


def test_scores_equal_pytorch_ood_called_directly(fitted):
    clf = fitted.classifier
    train = DataLoader(TensorDataset(*_images(40, seed=1)), batch_size=16)
    direct = {
        "vim": ViM(clf.features, d=4, w=clf.head.weight, b=clf.head.bias).fit(train),
        "mahalanobis": Mahalanobis(clf.features).fit(train),
        "energy": EnergyBased(clf, t=2.0),
        "ash": ASH(clf.feature_maps, clf.logits_from_maps, variant="ash-s", percentile=0.6),
        "odin": ODIN(clf, eps=0.002, temperature=100.0),
    }
    images, labels = _images(10, seed=2)
    ours = fitted.score(collate(_samples(images, labels)), "test")
    assert list(ours) == [*DETECTORS, "prediction"]
    for name, detector in direct.items():
        expected = detector.predict(images)
        torch.testing.assert_close(ours[name], expected, msg=name)
    assert fitted.representations == {"vim": "features", "mahalanobis": "features", "energy": "logits",
                                      "ash": "feature_maps", "odin": None}
    torch.testing.assert_close(ours["prediction"], clf(images).argmax(-1))


def test_scores_do_not_depend_on_the_batch(fitted):
    images, labels = _images(12, seed=3)
    samples = _samples(images, labels)
    whole = fitted.score(collate(samples), "test")
    parts = [fitted.score(collate(samples[i:i + 5]), "test") for i in range(0, 12, 5)]
    for name in DETECTORS:
        torch.testing.assert_close(torch.cat([p[name] for p in parts]), whole[name], rtol=1e-5, atol=1e-5,
                                   msg=name)


def test_detectors_that_need_fitting_refuse_to_score_before_fit():
    det = PostHocDetector({"vim": DETECTORS["vim"], "energy": DETECTORS["energy"]}, SPEC, None)
    assert det.needs_fit
    with pytest.raises(RuntimeError, match=r"\['vim'\] must be fitted on in-distribution data first"):
        det.score(collate(_samples(*_images(2, seed=4))), "test")
    assert not PostHocDetector({"energy": DETECTORS["energy"]}, SPEC, None).needs_fit
    given = PostHocDetector({"react": {"class_path": "ReAct", "init_args": {"threshold": 1.0}, "maps": "pooled"}},
                            SPEC, None)
    assert not given.needs_fit and isinstance(given.detectors["react"], ReAct)  # a given threshold is kept
    assert given.representations == {"react": "pooled_maps"}


def test_setup_fits_on_the_train_split_or_names_what_it_cannot_fit():
    """OODDetector.setup("test") fits what is unfitted on the datamodule's served train split, and refuses a
    benchmark without one, naming the detectors it would have fitted."""
    served = []
    train = _samples(*_images(40, seed=1))
    dm = SimpleNamespace(train_set=train, benchmark_name="folders", loader=_loader,
                         served=lambda ds, split: served.append(split) or ds)
    trainer = SimpleNamespace(datamodule=dm, strategy=SimpleNamespace(root_device=torch.device("cpu")),
                              is_global_zero=False)
    det = PostHocDetector({"vim": DETECTORS["vim"], "energy": DETECTORS["energy"]}, SPEC, None)
    det._trainer = trainer
    det.setup("fit")  # only a test fits
    assert det.needs_fit and served == []
    det.setup("test")
    assert not det.needs_fit and served == ["train"]
    unfitted = PostHocDetector({"vim": DETECTORS["vim"], "mahalanobis": DETECTORS["mahalanobis"]}, SPEC, None)
    unfitted._trainer = SimpleNamespace(**{**vars(trainer), "datamodule": SimpleNamespace(train_set=None,
                                                                                           benchmark_name="folders")})
    with pytest.raises(RuntimeError, match="PostHocDetector fits mahalanobis, vim on the ID train split, but "
                                           "benchmark 'folders' has none here"):
        unfitted.setup("test")


def test_gradient_detectors_need_autograd_at_test_time():
    det = PostHocDetector({"odin": DETECTORS["odin"]}, SPEC, None)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode: false"):
        det.on_test_start()


@pytest.mark.parametrize("detectors, match", [
    ({"x": {"class_path": "NoSuchDetector"}}, "no pytorch-ood detector 'pytorch_ood.detector.NoSuchDetector'"),
    ({"x": {"class_path": "torch.nn.Linear"}}, "is not a pytorch_ood.api.Detector"),
    ({"x": {"class_path": "ViM", "init_args": {"d": 2, "w": [1.0]}}}, r"\['w'\] come from the classifier"),
    ({"x": {"class_path": "ViM", "int_args": {"d": 2}}}, "has class_path, optional init_args and maps"),
    ({"x": {"class_path": "ASH", "maps": "flat"}}, "maps must be 'spatial' or 'pooled'"),
    ({"x": {"class_path": "MCD"}}, "would change with the batch size"),
    ({}, "at least one"),
])
def test_configuration_errors_are_named(detectors, match):
    with pytest.raises(ValueError, match=match):
        PostHocDetector(detectors, SPEC, None)


# --------------------------------------------------------------------------- through the evaluator, as baseline
class Brightness(OODDetector):
    """A refiner without a network: brighter images score higher."""

    score_names = ("brightness",)

    def score(self, batch: dict, dataset: str) -> dict:
        return {"brightness": batch["image"].float().mean((1, 2, 3))}


def test_posthoc_detector_is_the_cascades_baseline_through_the_evaluator(tmp_path):
    baseline = {"class_path": "ood_lightning.detectors.posthoc.PostHocDetector", "init_args": {
        "detectors": {"vim": DETECTORS["vim"], "odin": DETECTORS["odin"]}, "classifier": SPEC,
        "classifier_weights": None}}
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "default_root_dir": str(tmp_path), "enable_progress_bar": False,
                    "logger": False, "inference_mode": False},
        "model": {"class_path": "ood_lightning.detectors.fusion.CascadeFusion", "init_args": {
            "baseline": baseline, "refiner": {"class_path": f"{__name__}.Brightness"}, "baseline_score": "vim",
            "refiner_score": "brightness", "quantiles": [0.2, 0.8], "validation_size": 10}},
        "data": {"benchmark": "digits", "image_size": 8, "eval_subset": 6, "train_subset": 30, "batch_size": 4},
        "plots": False, "results_dir": str(tmp_path),
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cli = make_cli(["--config", str(tmp_path / "config.yaml")], description="test")
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["scores"]) == {"vim", "brightness+vim"}
    assert cli.model.baseline.detectors["vim"].principal_subspace.shape == (8, 4)  # fitted on the 20 others
    assert not cli.model.baseline.needs_fit
    with np.load(tmp_path / "scores" / "id.npz") as npz:
        assert len(npz["index"]) == 6 and np.isfinite(npz["score_vim"]).all()
