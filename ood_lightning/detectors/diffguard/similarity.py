"""The measures DiffGuard compares a synthesis with its reference by, as distances: higher = more likely OOD.

The reference code scores similarities; the project's one score sign turns each into a distance without changing
its ranking (docs/diffguard.md (Similarities)). Inputs are [B, 3, H, W] images in [0, 1] (the runner clamps them);
each measure returns one float32 value per sample, independent of the other samples in the batch.

- `dists`: piq's DISTS itself (the reference scores 1 - DISTS). Weight files: `vgg16_weights`, `dists_weights`.
- `lpips`: piq's LPIPS on VGG16 (the reference scores -LPIPS). Weight files: `vgg16_weights`, `lpips_weights`.
- `ssim`: 1 - SSIM (piq's defaults: 11 px Gaussian window, sigma 1.5).
- `psnr`: -PSNR in standard dB on [0, 1] images. piq adds 1e-8 to the MSE, so identical images give -80, not -inf.
- `l2`: ||reference - synthesis||_2 over C, H, W (the reference scores its negative).
- `logits_l1`: sum over classes of |f(reference) - f(synthesis)|, f the classifier under protection on [0, 1]
  images (the reference scores its negative; the paper's CIFAR metric, after DiffNB).

Weight files (see `WEIGHT_FILES`; nothing is ever downloaded, a missing one is an error naming it and its URL):
`vgg16_weights` = torchvision's `vgg16-397923af.pth`, `dists_weights` = piq's `dists_weights.pt` (alpha, beta),
`lpips_weights` = piq's `lpips_weights.pt` (the five linear-layer weights).

The GDM inversion's early-stop rule (docs/diffguard.md (Classifier-guided path)) compares noisy latents, which
leave [-1, 1], with the input: `psnr_db` and `dists_similarity_unclamped` measure them without clamping, as the
reference does.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from unittest import mock

import piq
import torch
import torchvision
from piq import perceptual as piq_perceptual
from torch import Tensor, nn

from ood_lightning.io import load_checkpoint

__all__ = [
    "DISTANCES",
    "WEIGHT_FILES",
    "DISTSDistance",
    "L2Distance",
    "LPIPSDistance",
    "LogitsL1Distance",
    "PSNRDistance",
    "SSIMDistance",
    "WeightFile",
    "build_distance",
    "build_distances",
    "dists_similarity_unclamped",
    "psnr_db",
]

# piq.psnr's offset on the MSE: identical images give 80 dB instead of infinity; psnr_db uses the same.
PSNR_EPS = 1e-8


@dataclass(frozen=True)
class WeightFile:
    """A local file a measure needs: the argument naming it, its usual file name, what it holds, where to get it."""

    argument: str
    filename: str
    what: str
    url: str

    def require(self, path: str | os.PathLike | None, measure: str) -> str:
        """The absolute path of an existing file, or a FileNotFoundError that says what to put where."""
        if path is None or str(path) == "":
            problem = f"{self.argument} is not set"
        else:
            path = os.path.abspath(os.path.expanduser(str(path)))
            if os.path.isfile(path):
                return path
            problem = f"{self.argument} {path} does not exist"
        raise FileNotFoundError(
            f"the {measure} distance needs {self.what}, file {self.filename}, but {problem}. Nothing is downloaded: "
            f"with internet access get it from {self.url}, put it in checkpoints/ and pass its path as "
            f"{self.argument} (see checkpoints/README.md)."
        )


# What piq 0.8.0 fetches through torch.hub when DISTS or LPIPS is constructed (piq/perceptual.py).
VGG16_FILE = WeightFile("vgg16_weights", "vgg16-397923af.pth",
                        "torchvision's VGG16 ImageNet weights (the feature network of DISTS and LPIPS)",
                        torchvision.models.VGG16_Weights.IMAGENET1K_V1.url)
DISTS_FILE = WeightFile("dists_weights", "dists_weights.pt", "piq's DISTS layer weights (alpha and beta)",
                        "https://github.com/photosynthesis-team/piq/releases/download/v0.4.1/dists_weights.pt")
LPIPS_FILE = WeightFile("lpips_weights", "lpips_weights.pt", "piq's LPIPS-VGG linear-layer weights",
                        "https://github.com/photosynthesis-team/photosynthesis.metrics/releases/download/v0.4.0/"
                        "lpips_weights.pt")
WEIGHT_FILES = (VGG16_FILE, DISTS_FILE, LPIPS_FILE)


def _vgg16_features(path: str) -> nn.Sequential:
    """torchvision's VGG16 `features` with the file's `features.*` weights, loaded strictly.

    The network is built on the meta device and only `features` is materialised: piq uses nothing else, and
    the 100M-parameter classifier would cost seconds and 400 MB for nothing.
    """
    state = load_checkpoint(path)
    features = ({k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
                if isinstance(state, Mapping) else {})
    with torch.device("meta"):
        vgg = torchvision.models.vgg16()
    vgg.features.to_empty(device="cpu")
    try:
        vgg.features.load_state_dict(features)
    except RuntimeError as err:
        raise ValueError(f"{path} does not hold torchvision's VGG16 weights ({VGG16_FILE.filename}): {err}") from None
    return vgg.features


def _build_piq(cls: type[nn.Module], vgg16_features: nn.Sequential, file: WeightFile, weights: object) -> nn.Module:
    """Run piq's own constructor with its two downloads answered from already-loaded local data.

    piq 0.8 takes no weight paths: its constructors call torchvision's `vgg16(pretrained=True)` (through the
    name `piq.perceptual.vgg16`) and `torch.hub.load_state_dict_from_url(<its URL>)`. Both names point at local
    data for the duration of the call only, so piq still chooses the layers, splits alpha/beta and swaps the
    pooling. A URL other than the expected one raises instead of downloading: a piq upgrade that changes what
    it fetches fails loudly here. piq gets a new container of the given layers: DISTS swaps the max-pooling
    layers of its container for L2 pooling, so a second measure built on the same layers (`build_distances`)
    keeps its own pooling while the convolutions, and their weights, exist once.
    """
    def local_vgg16(**_: object) -> SimpleNamespace:
        return SimpleNamespace(features=nn.Sequential(*vgg16_features))  # piq reads only `.features`

    def local_hub(url: str, *_: object, **__: object) -> object:
        if url != file.url:
            raise RuntimeError(f"piq's {cls.__name__} asked for {url}, expected {file.url}; this piq version "
                               "fetches other weights than the ones this project knows how to supply offline")
        return weights

    with mock.patch.object(piq_perceptual, "vgg16", local_vgg16), \
            mock.patch.object(torch.hub, "load_state_dict_from_url", local_hub):
        return cls(reduction="none")


class DISTSDistance(nn.Module):
    """DISTS (Ding et al. 2020) as piq computes it, in [0, 1] with 0 for identical images.

    piq does not check the value range of DISTS inputs (only their shape), so it also measures the unclamped
    latents of the early-stop rule; see `dists_similarity_unclamped`. Inputs are cast to float32 because piq
    moves its VGG16 to the input's dtype on every call.
    """

    def __init__(self, vgg16_weights: str | os.PathLike | None, dists_weights: str | os.PathLike | None,
                 vgg16_features: nn.Sequential | None = None):
        super().__init__()
        vgg16_path = VGG16_FILE.require(vgg16_weights, "dists")
        dists_path = DISTS_FILE.require(dists_weights, "dists")
        weights = load_checkpoint(dists_path)
        if not (isinstance(weights, Mapping)
                and all(isinstance(weights.get(k), Tensor) for k in ("alpha", "beta"))):
            raise ValueError(f"{dists_path} does not hold piq's DISTS weights ({DISTS_FILE.filename}): "
                             "expected a dict with tensors 'alpha' and 'beta'")
        features = _vgg16_features(vgg16_path) if vgg16_features is None else vgg16_features
        self.dists = _build_piq(piq.DISTS, features, DISTS_FILE, weights)

    def forward(self, reference: Tensor, synthesis: Tensor) -> Tensor:
        return self.dists(synthesis.float(), reference.float())


class LPIPSDistance(nn.Module):
    """LPIPS on VGG16 (Zhang et al. 2018) as piq computes it: 0 for identical images; float32 as DISTSDistance."""

    def __init__(self, vgg16_weights: str | os.PathLike | None, lpips_weights: str | os.PathLike | None,
                 vgg16_features: nn.Sequential | None = None):
        super().__init__()
        vgg16_path = VGG16_FILE.require(vgg16_weights, "lpips")
        lpips_path = LPIPS_FILE.require(lpips_weights, "lpips")
        weights = load_checkpoint(lpips_path)
        if not (isinstance(weights, Sequence) and weights and all(isinstance(w, Tensor) for w in weights)):
            raise ValueError(f"{lpips_path} does not hold piq's LPIPS weights ({LPIPS_FILE.filename}): "
                             "expected a list of per-layer tensors")
        features = _vgg16_features(vgg16_path) if vgg16_features is None else vgg16_features
        self.lpips = _build_piq(piq.LPIPS, features, LPIPS_FILE, list(weights))

    def forward(self, reference: Tensor, synthesis: Tensor) -> Tensor:
        return self.lpips(synthesis.float(), reference.float())


class SSIMDistance(nn.Module):
    """1 - SSIM with piq's defaults (the reference's SSIMLoss)."""

    def __init__(self):
        super().__init__()
        self.loss = piq.SSIMLoss(data_range=1.0, reduction="none")

    def forward(self, reference: Tensor, synthesis: Tensor) -> Tensor:
        return self.loss(synthesis, reference).float()


class PSNRDistance(nn.Module):
    """-PSNR in dB on [0, 1] images; -80 for identical ones (piq's 1e-8 MSE offset)."""

    def forward(self, reference: Tensor, synthesis: Tensor) -> Tensor:
        return -piq.psnr(synthesis, reference, data_range=1.0, reduction="none").float()


class L2Distance(nn.Module):
    """Euclidean distance over all pixels and channels of each sample."""

    def forward(self, reference: Tensor, synthesis: Tensor) -> Tensor:
        return (synthesis.float() - reference.float()).flatten(1).norm(dim=1)


class LogitsL1Distance(nn.Module):
    """L1 distance between the classifier's logits of the two images (DiffGuard's CIFAR metric).

    Each image goes through its own pass, so a classifier with batch-dependent layers still scores per sample.
    """

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, reference: Tensor, synthesis: Tensor) -> Tensor:
        return (self.classifier(synthesis).float() - self.classifier(reference).float()).abs().sum(dim=1)


def _dists(vgg16_weights: str | None, dists_weights: str | None, vgg16_features: nn.Sequential | None,
           **_: object) -> nn.Module:
    return DISTSDistance(vgg16_weights, dists_weights, vgg16_features)


def _lpips(vgg16_weights: str | None, lpips_weights: str | None, vgg16_features: nn.Sequential | None,
           **_: object) -> nn.Module:
    return LPIPSDistance(vgg16_weights, lpips_weights, vgg16_features)


def _logits_l1(classifier: nn.Module | None, **_: object) -> nn.Module:
    if classifier is None:
        raise ValueError("the logits_l1 distance needs the classifier (a module mapping [0, 1] images to logits)")
    return LogitsL1Distance(classifier)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "dists": _dists,
    "lpips": _lpips,
    "ssim": lambda **_: SSIMDistance(),
    "psnr": lambda **_: PSNRDistance(),
    "l2": lambda **_: L2Distance(),
    "logits_l1": _logits_l1,
}
DISTANCES = tuple(_BUILDERS)
_ON_VGG16 = {"dists": DISTS_FILE, "lpips": LPIPS_FILE}  # the measures built on VGG16 features, and their own file


def build_distance(name: str, *, vgg16_weights: str | os.PathLike | None = None,
                   dists_weights: str | os.PathLike | None = None, lpips_weights: str | os.PathLike | None = None,
                   classifier: nn.Module | None = None, vgg16_features: nn.Sequential | None = None) -> nn.Module:
    """The distance `name` (one of DISTANCES): a module mapping (reference, synthesis) to [B] float32 distances.

    Arguments a measure does not use are ignored, so a caller can pass one set of paths for every measure. The
    modules need no gradients; callers wrap them in torch.no_grad(). `vgg16_features`: VGG16 layers already read
    from `vgg16_weights` (see `build_distances`), instead of reading the file again.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown distance {name!r}; valid names: {', '.join(DISTANCES)}")
    return _BUILDERS[name](vgg16_weights=vgg16_weights, dists_weights=dists_weights, lpips_weights=lpips_weights,
                           classifier=classifier, vgg16_features=vgg16_features)


def build_distances(names: Sequence[str], *, vgg16_weights: str | os.PathLike | None = None,
                    dists_weights: str | os.PathLike | None = None, lpips_weights: str | os.PathLike | None = None,
                    classifier: nn.Module | None = None) -> dict[str, nn.Module]:
    """{name: build_distance(name, ...)} with the VGG16 file read once and its convolutions built once for all the
    measures that use it (dists and lpips: 528 MB read and 15 M parameters once instead of twice). Every weight
    file is checked before any is read."""
    files = {"vgg16_weights": vgg16_weights, "dists_weights": dists_weights, "lpips_weights": lpips_weights}
    on_vgg = [name for name in names if name in _ON_VGG16]
    features = None
    if len(on_vgg) > 1:
        for name in on_vgg:
            VGG16_FILE.require(vgg16_weights, name)
            _ON_VGG16[name].require(files[_ON_VGG16[name].argument], name)
        features = _vgg16_features(VGG16_FILE.require(vgg16_weights, on_vgg[0]))
    return {name: build_distance(name, classifier=classifier, vgg16_features=features, **files) for name in names}


def psnr_db(x: Tensor, y: Tensor) -> Tensor:
    """Standard PSNR in dB, per sample, of two [-1, 1]-scale tensors seen as (t + 1) / 2 images, without clamping.

    The early-stop rule compares noisy latents, which leave [-1, 1]; piq.psnr asserts its inputs lie in
    [0, data_range], so the formula is written out: -10 log10(MSE((x - y) / 2) + 1e-8), data range 1 (identical
    tensors give 80 dB, as piq.psnr). The reference computes 20 log10(255 / RMSE(x - y)) on the [-1, 1] tensors,
    which is this value plus 20 log10(127.5) = 42.11 dB: its 48.5 threshold is 6.39 dB here.
    """
    mse = ((x.float() - y.float()) / 2).square().flatten(1).mean(dim=1)
    return -10 * torch.log10(mse + PSNR_EPS)


def dists_similarity_unclamped(dists: DISTSDistance, x: Tensor, y: Tensor) -> Tensor:
    """1 - DISTS of two [-1, 1]-scale tensors seen as (t + 1) / 2 images without clamping (the early-stop rule).

    This is the reference's arithmetic: piq's DISTS validates only shapes, so out-of-range values go through the
    ImageNet normalisation and VGG16 unchanged.
    """
    return 1 - dists((x + 1) / 2, (y + 1) / 2)
