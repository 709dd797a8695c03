"""Classifier baselines: score formulas and signs against plain math / numpy, KNN and ViM fitting, the detector
interface, and end-to-end runs through evaluate.py (random weights on tiny folders; real weights on real JPEGs)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import evaluate
from data_helpers import make_class_tree, make_flat
from ood_lightning.cli import make_cli
from ood_lightning.data.datamodule import collate
from ood_lightning.detectors.baselines import (
    ClassifierBaselines,
    energy_score,
    fit_vim,
    knn_score,
    mls_score,
    msp_score,
    vim_score,
)

ROOT = Path(__file__).resolve().parents[1]
ALL = ["msp", "mls", "ebo", "knn", "vim"]


# ------------------------------------------------------------------------------------------ score formulas
def test_scores_hand_computed_three_classes():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    z = math.exp(2) + math.exp(1) + 1
    torch.testing.assert_close(msp_score(logits), torch.tensor([-math.exp(2) / z, -1 / 3]))
    torch.testing.assert_close(mls_score(logits), torch.tensor([-2.0, 0.0]))
    torch.testing.assert_close(energy_score(logits), torch.tensor([-math.log(z), -math.log(3)]))
    t2 = -2 * math.log(math.exp(1) + math.exp(0.5) + 1)
    torch.testing.assert_close(energy_score(logits, temperature=2.0), torch.tensor([t2, -2 * math.log(3)]))


def test_flat_logits_score_more_ood_than_confident_ones():
    confident, flat = torch.tensor([9.0, 0.5, 0.1, 0.0]), torch.tensor([1.0, 0.9, 1.1, 1.0])
    for fn in (msp_score, mls_score, energy_score):
        s = fn(torch.stack([confident, flat]))
        assert s[1] > s[0], fn.__name__


def test_knn_matches_brute_force_and_far_points_score_higher():
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(203, 16))
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    query = rng.normal(size=(9, 16))
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    k = 7
    expected = np.sort(np.linalg.norm(query[:, None] - bank[None], axis=-1), axis=1)[:, k - 1]
    got = knn_score(torch.tensor(query, dtype=torch.float32), torch.tensor(bank, dtype=torch.float32), k, chunk=37)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4)

    cluster = F.normalize(torch.tensor([1.0] + [0.0] * 15) + 0.1 * torch.tensor(rng.normal(size=(100, 16))).float())
    near, far = F.normalize(torch.tensor([[1.0, 0.05] + [0.0] * 14, [0.0, 1.0] + [0.0] * 14]))
    s = knn_score(torch.stack([near, far]), cluster, k=5)
    assert s[1] > s[0] + 0.5
    with pytest.raises(ValueError, match="k <= 100"):
        knn_score(near[None], cluster, k=101)


def _vim_data(seed=0, n=300, f_dim=10, c=4, d=3):
    """Train features on a d-dim subspace (plus a little noise) around ViM's origin u = -pinv(W) b."""
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(c, f_dim, generator=g), torch.randn(c, generator=g)
    u = -torch.linalg.pinv(w.double()) @ b.double()
    basis = torch.linalg.qr(torch.randn(f_dim, d, generator=g, dtype=torch.float64))[0]
    feats = u + torch.randn(n, d, generator=g, dtype=torch.float64) @ basis.T * 3
    feats = (feats + 0.05 * torch.randn(n, f_dim, generator=g, dtype=torch.float64)).float()
    return feats, feats @ w.T + b, w, b, basis


def test_vim_matches_numpy_formulas():
    feats, logits, w, b, _ = _vim_data()
    dim = 3
    origin, basis, alpha = fit_vim(feats, logits, w, b, dim)
    x, lg, W, B = (t.double().numpy() for t in (feats, logits, w, b))
    u = -np.linalg.pinv(W) @ B
    vals, vecs = np.linalg.eig((x - u).T @ (x - u) / len(x))  # as OpenOOD, sorted by decreasing eigenvalue
    ns = np.real(vecs[:, np.argsort(-np.real(vals))[dim:]])
    residual = np.linalg.norm((x - u) @ ns, axis=-1)
    np_alpha = lg.max(-1).mean() / residual.mean()
    np.testing.assert_allclose(origin.numpy(), u, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(alpha.item(), np_alpha, rtol=1e-4)
    got_residual = torch.linalg.vector_norm((feats - origin) @ basis, dim=-1).numpy()
    np.testing.assert_allclose(got_residual, residual, rtol=1e-3, atol=1e-4)  # basis-free: norms agree
    expected = np_alpha * residual - np.log(np.exp(lg).sum(-1))
    np.testing.assert_allclose(vim_score(feats, logits, origin, basis, alpha).numpy(), expected, rtol=1e-3, atol=1e-3)


def test_vim_point_off_the_principal_subspace_scores_higher():
    feats, logits, w, b, principal = _vim_data(seed=1)
    origin, basis, alpha = fit_vim(feats, logits, w, b, 3)
    off = torch.linalg.qr(torch.cat([principal, torch.randn(10, 1, dtype=torch.float64)], 1))[0][:, -1]
    on_point = feats[:1]
    off_point = on_point + 4 * off.float()
    same_logits = logits[:1].repeat(2, 1)  # isolate the residual term
    s = vim_score(torch.cat([on_point, off_point]), same_logits, origin, basis, alpha)
    assert s[1] > s[0] + 1
    with pytest.raises(ValueError, match="vim_dim"):
        fit_vim(feats, logits, w, b, 10)


# ------------------------------------------------------------------------------------------ the detector
def _tiny_set(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.rand(3, 32, 32, generator=g), "label": 0, "index": i} for i in range(n)]


def _loader(ds):
    return DataLoader(ds, batch_size=16, collate_fn=collate)  # few forward passes: CPU time is shared in CI


def test_score_returns_exactly_its_score_names():
    torch.manual_seed(0)
    batch = collate(_tiny_set(5, seed=1))
    for scores in (ALL, ["msp"], ["vim", "ebo"]):
        det = ClassifierBaselines("cifar_resnet20", None, scores=scores, knn_k=3, vim_dim=8)
        det.fit(_tiny_set(12), _loader, progress=False)
        out = det.score(batch, "id")
        prediction = out.pop("prediction")
        assert list(out) == scores == list(det.score_names)
        assert all(v.shape == (5,) and v.dtype == torch.float32 and torch.isfinite(v).all() for v in out.values())
        assert prediction.shape == (5,) and prediction.dtype == torch.int64


def test_knn_train_fraction_and_argument_checks():
    det = ClassifierBaselines("cifar_resnet20", None, scores=["knn"], knn_k=3, knn_train_fraction=0.5)
    det.fit(_tiny_set(20), _loader, progress=False)
    assert det.knn_bank.shape == (10, 64)
    torch.testing.assert_close(det.knn_bank.norm(dim=1), torch.ones(10))
    with pytest.raises(RuntimeError, match="not fitted"):
        ClassifierBaselines("cifar_resnet20", None, scores=ALL).score(collate(_tiny_set(2)), "id")
    with pytest.raises(ValueError, match="vim_dim"):
        ClassifierBaselines("cifar_resnet20", None, scores=ALL, vim_dim=64)
    with pytest.raises(ValueError, match="scores must be"):
        ClassifierBaselines("cifar_resnet20", None, scores=["msp", "odin"])
    with pytest.raises(FileNotFoundError, match="missing.th"):
        ClassifierBaselines("cifar_resnet20", "missing.th")


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_evaluate_py_end_to_end_on_tiny_folders(tmp_path):
    data = tmp_path / "data"
    make_class_tree(data / "train", per_class=4, size=(32, 32))
    make_class_tree(data / "test", per_class=3, size=(32, 32))
    make_flat(data / "noise", n=5, size=(32, 32))
    make_flat(data / "more", n=4, size=(40, 40))
    out = tmp_path / "results"
    evaluate.main([
        "--model.class_path", "ood_lightning.detectors.baselines.ClassifierBaselines",
        "--model.init_args.classifier", "cifar_resnet20",
        "--model.init_args.classifier_weights", "null",
        "--model.init_args.scores", "[msp, mls, ebo, knn, vim]",
        "--model.init_args.knn_k", "2",
        "--model.init_args.vim_dim", "8",
        "--results_dir", str(out),
        "--data.benchmark", "folders",
        "--data.root", str(data),
        "--data.id_train", "train", "--data.id_test", "test",
        "--data.ood", "{noise: noise, more: more}",
        "--data.image_size", "32", "--data.batch_size", "8",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
    ])
    results = _results(out)
    assert results["detector"] == "ClassifierBaselines" and results["n_id"] == 6
    assert list(results["scores"]) == ALL
    for score in ALL:
        assert results["scores"][score]["noise"]["n_ood"] == 5 and results["scores"][score]["more"]["n_ood"] == 4
    with np.load(out / "scores" / "noise.npz") as npz:
        np.testing.assert_array_equal(npz["index"], np.arange(5))
        assert {f"score_{s}" for s in ALL} | {"extra_prediction"} <= set(npz.files)


def test_shipped_config_builds(shared_dir, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's paths are relative to the project root
    cli = make_cli(["--config", "configs/baselines/cifar10_jpeg_densenet.yaml", "--trainer.logger", "false"], "")
    assert isinstance(cli.model, ClassifierBaselines)
    assert cli.model.score_names == tuple(ALL) and cli.model.classifier.feature_dim == 342
    assert cli.datamodule.hparams.benchmark == "cifar10_jpeg"


def test_real_resnet20_separates_mnist_from_cifar10(real_data_root, shared_dir, tmp_path):
    """Real weights, real JPEGs (the seeded sample: 100 train, 200 test, 40 TIN, 40 MNIST): digits are far-OOD."""
    out = tmp_path / "results"
    evaluate.main([
        "--model.class_path", "ood_lightning.detectors.baselines.ClassifierBaselines",
        "--model.init_args.classifier", "cifar_resnet20",
        "--model.init_args.classifier_weights", str(shared_dir / "weights" / "cifar10_resnet20.th"),
        "--model.init_args.scores", "[msp, mls, ebo, knn, vim]",
        "--model.init_args.knn_k", "10",
        "--model.init_args.vim_dim", "32",
        "--results_dir", str(out),
        "--data.benchmark", "cifar10_jpeg", "--data.root", str(real_data_root),
        "--data.image_size", "32", "--data.batch_size", "100",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
    ])
    scores = _results(out)["scores"]
    for score in ALL:
        assert scores[score]["mnist"]["auroc"] > 0.7, (score, scores[score]["mnist"])
    with np.load(out / "scores" / "id.npz") as npz:  # predictions travel with the scores (ResNet-20: ~84% here)
        assert (npz["extra_prediction"] == npz["label"]).mean() > 0.6
