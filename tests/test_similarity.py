"""DiffGuard's distances: signs, per-sample independence, offline weight loading and the early-stop measures.

DISTS and LPIPS load weight files written here from randomly initialised networks (the layouts of torchvision's
vgg16-397923af.pth and piq's dists_weights.pt / lpips_weights.pt), with every route to the network made to fail.
"""
from __future__ import annotations

import inspect
import math
import socket
import urllib.request

import pytest
import torch
import torchvision
from piq_weights import write_piq_weight_files
from torch import Tensor, nn

from ood_lightning.classifiers import Classifier
from ood_lightning.detectors.diffguard import similarity
from ood_lightning.detectors.diffguard.gdm import DiffGuardGDM
from ood_lightning.detectors.diffguard.similarity import (
    DISTANCES,
    DISTSDistance,
    build_distance,
    dists_similarity_unclamped,
    psnr_db,
)

SIZE = 32


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("network access attempted")


@pytest.fixture(scope="module", autouse=True)
def offline():
    """Every download route fails for the whole module, module-scoped fixtures included."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.hub, "load_state_dict_from_url", _no_network)
        mp.setattr(torch.hub, "download_url_to_file", _no_network)
        mp.setattr(torchvision.models._api, "load_state_dict_from_url", _no_network)
        mp.setattr(urllib.request, "urlopen", _no_network)
        mp.setattr(socket.socket, "connect", _no_network)
        yield


class _TinyNet(nn.Module):
    """The smallest network Classifier accepts: flattened pixels -> a linear head."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3 * SIZE * SIZE, 4)

    def forward_features(self, x: Tensor) -> Tensor:
        return x.flatten(1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, str]:
    return write_piq_weight_files(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    torch.manual_seed(1)
    return Classifier(_TinyNet(), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def distances(weights, classifier) -> dict[str, nn.Module]:
    return {name: build_distance(name, classifier=classifier, **weights) for name in DISTANCES}


def _images(n: int = 3, seed: int = 0) -> Tensor:
    """Smooth-ish images in [0.2, 0.8] so that small perturbations stay inside [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, SIZE // 4, SIZE // 4, generator=gen)
    return 0.2 + 0.6 * torch.nn.functional.interpolate(coarse, size=SIZE, mode="bilinear")


def _perturbed(x: Tensor, scale: float, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (x + scale * torch.randn(x.shape, generator=gen)).clamp(0, 1)


MINIMUM = {"psnr": -80.0}  # -PSNR of identical images: piq's 1e-8 MSE offset caps PSNR at 80 dB


@pytest.mark.parametrize("name", DISTANCES)
def test_distance_is_minimal_for_identical_images_and_grows_with_the_perturbation(distances, name):
    x = _images()
    with torch.no_grad():
        same = distances[name](x, x.clone())
        small = distances[name](x, _perturbed(x, 0.02))
        large = distances[name](x, _perturbed(x, 0.2))
    assert same.shape == (len(x),) and same.dtype == torch.float32
    torch.testing.assert_close(same, torch.full_like(same, MINIMUM.get(name, 0.0)), atol=1e-5, rtol=0)
    assert (same < small).all() and (small < large).all(), (same, small, large)


@pytest.mark.parametrize("name", DISTANCES)
def test_a_sample_distance_does_not_depend_on_the_rest_of_the_batch(distances, name):
    x, y = _images(), _perturbed(_images(), 0.1)
    with torch.no_grad():
        batch = distances[name](x, y)
        alone = torch.cat([distances[name](x[i:i + 1], y[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-4)


def test_simple_distances_match_hand_computations(distances):
    x, y = _images(2), _perturbed(_images(2), 0.1)
    diff = (x - y).flatten(1)
    torch.testing.assert_close(distances["l2"](x, y), diff.square().sum(1).sqrt())
    torch.testing.assert_close(distances["psnr"](x, y), 10 * torch.log10(diff.square().mean(1) + 1e-8))


def test_logits_l1_is_the_l1_distance_between_logits(distances, classifier):
    x, y = _images(2), _perturbed(_images(2), 0.1)
    head = classifier.net.head
    hand = (((y - x) / 0.25).flatten(1) @ head.weight.T).abs().sum(1)  # the bias and the mean cancel
    torch.testing.assert_close(distances["logits_l1"](x, y), hand, atol=1e-4, rtol=1e-4)


def test_psnr_db_is_standard_psnr_of_the_01_images():
    x = torch.zeros(2, 3, 4, 4)
    y = torch.full((2, 3, 4, 4), 0.5)
    y[1] = 1.0
    # (x + 1) / 2 and (y + 1) / 2 differ by 0.25 and 0.5: MSE 1/16 and 1/4
    torch.testing.assert_close(psnr_db(x, y), torch.tensor([10 * math.log10(16), 10 * math.log10(4)]))
    assert psnr_db(x, x).tolist() == pytest.approx([80.0, 80.0])


def test_psnr_db_is_the_reference_255_peak_value_minus_42_11_db():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(3, 3, 8, 8, generator=gen) * 2 - 1, torch.rand(3, 3, 8, 8, generator=gen) * 2 - 1
    reference = 20 * torch.log10(255 / (x - y).square().flatten(1).mean(1).sqrt())  # metrics.py, on [-1, 1]
    torch.testing.assert_close(psnr_db(x, y), reference - 20 * math.log10(127.5), atol=1e-4, rtol=0)


def test_the_default_psnr_stop_is_the_reference_48_5_threshold():
    """DiffGuardGDM's default stop_psnr stops exactly where the reference's 48.5 (255-peak on [-1, 1]) does: pairs at
    a reference PSNR of 48.45 stop, pairs at 48.55 do not."""
    default = inspect.signature(DiffGuardGDM).parameters["stop_psnr"].default
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for reference_db, stops in ((48.45, True), (48.55, False)):
        rmse = 255 / 10 ** (reference_db / 20)  # 20 log10(255 / RMSE) = reference_db; a constant offset has this RMSE
        y = x + rmse
        reference = 20 * torch.log10(255 / (x - y).double().square().flatten(1).mean(1).sqrt())
        assert reference.tolist() == pytest.approx([reference_db] * 2)
        assert ((psnr_db(y, x) < default) == stops).all(), (reference_db, default)


def test_psnr_db_accepts_and_does_not_clamp_values_outside_the_range():
    gen = torch.Generator().manual_seed(0)
    x, y = 3 * torch.randn(2, 3, 8, 8, generator=gen), 3 * torch.randn(2, 3, 8, 8, generator=gen)
    hand = -10 * torch.log10(((x - y) / 2).square().flatten(1).mean(1))
    torch.testing.assert_close(psnr_db(x, y), hand)
    assert (psnr_db(x, y) != psnr_db(x.clamp(-1, 1), y.clamp(-1, 1))).all()


def test_dists_of_unclamped_latents(distances):
    dists = distances["dists"]
    assert isinstance(dists, DISTSDistance)
    image = _images(2) * 2 - 1
    latent = image + 0.8 * torch.randn(image.shape, generator=torch.Generator().manual_seed(2))
    assert latent.min() < -1 and latent.max() > 1
    with torch.no_grad():
        sim = dists_similarity_unclamped(dists, latent, image)
        clamped = 1 - dists(((latent + 1) / 2).clamp(0, 1), (image + 1) / 2)
        same = dists_similarity_unclamped(dists, latent, latent.clone())
    assert sim.shape == (2,) and torch.isfinite(sim).all()
    torch.testing.assert_close(sim, 1 - dists((latent + 1) / 2, (image + 1) / 2))
    assert (sim != clamped).all()  # no clamp happened anywhere
    torch.testing.assert_close(same, torch.ones(2), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("name", "unset", "filename", "url_part"), [
    ("dists", "vgg16_weights", "vgg16-397923af.pth", "download.pytorch.org/models/vgg16-397923af.pth"),
    ("dists", "dists_weights", "dists_weights.pt", "piq/releases/download/v0.4.1/dists_weights.pt"),
    ("lpips", "vgg16_weights", "vgg16-397923af.pth", "download.pytorch.org/models/vgg16-397923af.pth"),
    ("lpips", "lpips_weights", "lpips_weights.pt", "photosynthesis.metrics/releases/download/v0.4.0/lpips_weights"),
])
def test_a_missing_weight_file_is_a_clear_error_before_any_loading(weights, monkeypatch, name, unset, filename,
                                                                   url_part):
    monkeypatch.setattr(similarity, "load_checkpoint", _no_network)  # nothing may be read before the check
    for value, problem in ((None, "is not set"), ("/nowhere/x.pth", "/nowhere/x.pth does not exist")):
        with pytest.raises(FileNotFoundError) as err:
            build_distance(name, **{**weights, unset: value})
        message = str(err.value)
        for part in (problem, filename, url_part, "checkpoints/", unset, name):
            assert part in message, message


def test_a_wrong_file_is_named(weights):
    with pytest.raises(ValueError, match="does not hold torchvision's VGG16 weights"):
        build_distance("dists", **{**weights, "vgg16_weights": weights["dists_weights"]})
    with pytest.raises(ValueError, match="does not hold piq's DISTS weights"):
        build_distance("dists", **{**weights, "dists_weights": weights["lpips_weights"]})
    with pytest.raises(ValueError, match="does not hold piq's LPIPS weights"):
        build_distance("lpips", **{**weights, "lpips_weights": weights["dists_weights"]})


def test_loading_leaves_piq_and_torch_hub_untouched(weights):
    build_distance("lpips", **weights)
    assert torch.hub.load_state_dict_from_url is _no_network  # the temporary redirection is undone
    assert similarity.piq_perceptual.vgg16 is torchvision.models.vgg16


def test_registry():
    assert DISTANCES == ("dists", "lpips", "ssim", "psnr", "l2", "logits_l1")
    with pytest.raises(ValueError, match="valid names: dists, lpips, ssim, psnr, l2, logits_l1"):
        build_distance("fsim")
    with pytest.raises(ValueError, match="needs the classifier"):
        build_distance("logits_l1")


def test_loaded_vgg_holds_the_file_weights(weights, distances):
    state = torch.load(weights["vgg16_weights"], weights_only=True)
    model = distances["dists"].dists.model
    torch.testing.assert_close(model[0].weight, state["features.0.weight"])
    torch.testing.assert_close(distances["lpips"].lpips.model[28].bias, state["features.28.bias"])


def test_dists_and_lpips_read_and_build_the_vgg16_once(weights, distances, monkeypatch):
    """build_distances reads the VGG16 file once for both measures; they share its convolutions but each keeps its
    own pooling (DISTS swaps max-pooling for L2 pooling), and both measure what they measure when built alone."""
    reads = []
    real = similarity.load_checkpoint
    monkeypatch.setattr(similarity, "load_checkpoint", lambda path, *a, **k: reads.append(path) or real(path, *a, **k))
    both = similarity.build_distances(["dists", "lpips", "l2"], **weights)
    assert sorted(reads) == sorted([weights["vgg16_weights"], weights["dists_weights"], weights["lpips_weights"]])
    dists, lpips = both["dists"].dists.model, both["lpips"].lpips.model
    assert dists[0].weight is lpips[0].weight  # one copy of the convolutions
    assert isinstance(lpips[4], nn.MaxPool2d) and not isinstance(dists[4], nn.MaxPool2d)
    x = _images()
    y = _perturbed(x, 0.1)
    for name in ("dists", "lpips"):
        torch.testing.assert_close(both[name](x, y), distances[name](x, y), rtol=1e-6, atol=1e-7)
    reads.clear()
    with pytest.raises(FileNotFoundError, match="lpips_weights is not set"):  # every file checked before any read
        similarity.build_distances(["dists", "lpips"], **{**weights, "lpips_weights": None})
    assert reads == []
