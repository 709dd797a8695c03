"""Our MSP / MaxLogit / Energy / KNN / ViM (detectors/baselines.py) against pytorch-ood's on the same logits and
features: equal to float32 rounding, except ViM, whose statistics pytorch-ood fits in float32 and ours in float64
(OpenOOD's precision); on well-conditioned features the two agree closely, and a float32 fit of ours reproduces
pytorch-ood's (so precision is the whole difference). docs/baselines.md gives the numbers on real features."""
import pytest
import torch
import torch.nn.functional as F
from pytorch_ood.detector import KNN, ViM, EnergyBased, MaxLogit, MaxSoftmax

from ood_lightning.detectors.baselines import energy_score, fit_vim, knn_score, mls_score, msp_score, vim_score


def _data(n=400, f_dim=12, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(3.0, 0.5, f_dim)  # distinct variances: a well-conditioned principal space
    feats = torch.randn(n, f_dim, generator=g) * scales + 1.0
    w, b = torch.randn(c, f_dim, generator=g), torch.randn(c, generator=g)
    return feats, feats @ w.T + b, w, b


def test_logit_scores_equal_pytorch_oods():
    logits = torch.randn(64, 10, generator=torch.Generator().manual_seed(1)) * 4
    torch.testing.assert_close(msp_score(logits), MaxSoftmax.score(logits), rtol=0, atol=1e-7)
    torch.testing.assert_close(mls_score(logits), MaxLogit.score(logits), rtol=0, atol=0)
    for t in (1.0, 2.5):
        torch.testing.assert_close(energy_score(logits, t), EnergyBased.score(logits, t), rtol=1e-6, atol=1e-6)


def test_knn_equals_pytorch_oods_sklearn_index():
    train, _, _, _ = _data(n=300)
    test, _, _, _ = _data(n=40, seed=2)
    theirs = KNN(None, k=7).fit_features(train, torch.zeros(len(train), dtype=torch.long)).predict_features(test)
    ours = knn_score(F.normalize(test, dim=1, eps=1e-10), F.normalize(train, dim=1, eps=1e-10), 7)
    torch.testing.assert_close(ours.double(), theirs, rtol=1e-5, atol=1e-6)  # theirs: sklearn's float64 distances


def test_vim_agrees_and_float32_statistics_are_the_whole_difference():
    train, train_logits, w, b = _data()
    test = _data(n=50, seed=3)[0]
    test_logits = test @ w.T + b  # the same head
    theirs = ViM(None, d=6, w=w, b=b).fit_features(train, torch.zeros(len(train), dtype=torch.long))
    origin, basis, alpha = fit_vim(train, train_logits, w, b, 6)
    ours = vim_score(test, test_logits, origin, basis, alpha)
    expected = theirs.predict_features(test)
    assert alpha.item() == pytest.approx(theirs.alpha, rel=1e-4)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    # Same formulas in float32 throughout (pytorch-ood's precision): agreement to rounding.
    centred = train - theirs.u
    basis32 = torch.linalg.eigh(centred.T @ centred / len(train))[1][:, :6]
    alpha32 = train_logits.amax(-1).mean() / torch.linalg.vector_norm(centred @ basis32, dim=-1).mean()
    torch.testing.assert_close(vim_score(test, test_logits, theirs.u, basis32, alpha32), expected,
                               rtol=1e-5, atol=1e-5)
