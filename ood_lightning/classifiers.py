"""Classifiers under protection: the networks whose logits and penultimate features the baselines (and DiffGuard's
guidance) read.

Every network is built from a local weight file and carries its own input normalisation, so callers always pass
images in [0, 1]. A `Classifier` exposes `forward` (logits), `features` (penultimate vector), `logits_and_features`
(both from one pass) and `head` (the final nn.Linear, whose W and b ViM needs). The architectures are written out
here so their parameter names are exactly those of the published weight files and load with strict=True:

- `cifar_densenet_bc100`: DenseNet-BC-100, growth 12 (the ODIN / DICE / ReAct network), 342-d features; a plain
  state dict with keys `encoder.*` and `output_layer.*`; CIFAR mean/std.
- `cifar_resnet20`, `cifar_resnet56`: He et al. 2016 CIFAR ResNets with option-A shortcuts, 64-d features;
  `{best_prec1, state_dict}` with keys `module.*`; ImageNet mean/std.
- `resnet18_32x32`: OpenOOD v1.5's CIFAR ResNet-18 (`conv1`, `layer1..4` with conv shortcuts, `fc`), 512-d features;
  OpenOOD's CIFAR mean/std.
- `resnet50`: torchvision's ResNet-50 (timm's `resnet50` has the same keys), 2048-d features; ImageNet mean/std.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, ResNet

from ood_lightning.backbones import read_state_dict
from ood_lightning.io import load_state_strict

__all__ = ["CLASSIFIERS", "ArchSpec", "Classifier", "build_classifier"]

CIFAR_MEAN, CIFAR_STD = (0.491, 0.482, 0.447), (0.247, 0.244, 0.262)  # ../shared/weights/README.md (DenseNet)
OPENOOD_CIFAR_MEAN, OPENOOD_CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # OpenOOD preprocessor
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------- DenseNet-BC
class _DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (4 x growth) - BN-ReLU-3x3 conv (growth), output concatenated to the input."""

    def __init__(self, channels: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        return torch.cat([x, self.conv2(F.relu(self.bn2(out)))], 1)


class _DenseBlock(nn.Module):
    def __init__(self, channels: int, growth: int, depth: int):
        super().__init__()
        self.layer = nn.Sequential(*[_DenseLayer(channels + i * growth, growth) for i in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class _Transition(nn.Module):
    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.conv1(F.relu(self.bn1(x))), 2)


class DenseNetBC(nn.Module):
    """DenseNet-BC for 32 px images (Huang et al. 2017): depth 100 = 3 blocks of 16 bottleneck layers, growth 12,
    compression 0.5; channels 24 -> 216 -> 108 -> 300 -> 150 -> 342, then BN-ReLU-global pool -> `output_layer`."""

    def __init__(self, num_classes: int = 10, depth: int = 100, growth: int = 12, compression: float = 0.5):
        super().__init__()
        n = (depth - 4) // 6
        channels = 2 * growth
        enc = nn.Module()
        enc.conv1 = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        for i in (1, 2, 3):
            setattr(enc, f"block{i}", _DenseBlock(channels, growth, n))
            channels += n * growth
            if i < 3:
                setattr(enc, f"trans{i}", _Transition(channels, int(channels * compression)))
                channels = int(channels * compression)
        enc.bn1 = nn.BatchNorm2d(channels)
        self.encoder = enc
        self.output_layer = nn.Linear(channels, num_classes)

    @property
    def head(self) -> nn.Linear:
        return self.output_layer

    def forward_features(self, x: Tensor) -> Tensor:
        e = self.encoder
        x = e.trans2(e.block2(e.trans1(e.block1(e.conv1(x)))))
        return F.adaptive_avg_pool2d(F.relu(e.bn1(e.block3(x))), 1).flatten(1)


# ------------------------------------------------------------------------------------------ CIFAR ResNets
class _BasicBlock(nn.Module):
    """3x3-3x3 residual block. Shortcut "A" (He et al.'s CIFAR nets): strided subsample + zero channel padding, no
    parameters; "B" (OpenOOD's ResNet-18): 1x1 conv + BN, as `shortcut.0`/`shortcut.1`."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = 0
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            if shortcut == "A":
                self.pad, self.stride = (cout - cin) // 2, stride
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.pad:  # option A: zero channels appended on both sides of the subsampled input
            skip = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad, self.pad))
        else:
            skip = self.shortcut(x)
        return F.relu(out + skip)


class CifarResNet(nn.Module):
    """3x3 stem (no max-pool) and stages of basic blocks at 32/16/8(/4) px, global pool, linear head.

    `widths=(16, 32, 64)`, `blocks=(n,)*3`, shortcut "A", head `linear`: ResNet-(6n+2) of He et al. 2016;
    `widths=(64, 128, 256, 512)`, `blocks=(2,)*4`, shortcut "B", head `fc`: OpenOOD's ResNet18_32x32.
    """

    def __init__(self, widths: Sequence[int], blocks: Sequence[int], shortcut: str, head_name: str,
                 num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(
                *[_BasicBlock(cin if j == 0 else width, width, stride if j == 0 else 1, shortcut) for j in range(n)]))
            cin = width
        self.num_stages = len(widths)
        self.head_name = head_name
        setattr(self, head_name, nn.Linear(cin, num_classes))

    @property
    def head(self) -> nn.Linear:
        return getattr(self, self.head_name)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class TorchvisionResNet50(ResNet):
    """torchvision's ResNet-50 (timm's `resnet50` uses the same key names); features = the 2048-d pooled vector."""

    def __init__(self, num_classes: int = 1000):
        super().__init__(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)

    @property
    def head(self) -> nn.Linear:
        return self.fc

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.avgpool(self.layer4(self.layer3(self.layer2(self.layer1(x))))).flatten(1)


# ------------------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture, the normalisation its weights expect, which file belongs to it and where
    Grad-CAM looks."""

    build: Callable[[int], nn.Module]
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    head_key: str  # state-dict key of the head weight, to read the number of classes from a file
    weights_hint: str
    cam_layer: Callable[[nn.Module], nn.Module]  # the last convolutional block, on the final map before pooling


def _last_stage(net: CifarResNet) -> nn.Module:
    return getattr(net, f"layer{net.num_stages}")[-1]


def _he_resnet(n: int) -> Callable[[int], nn.Module]:
    return lambda c: CifarResNet((16, 32, 64), (n,) * 3, "A", "linear", c)


_IDELBAYEV = ("the CIFAR-10 ResNet-{d} of Yerlan Idelbayev's pytorch_resnet_cifar10 (resnet{d}-*.th; a copy is "
              "../shared/weights/cifar10_resnet{d}.th)")
CLASSIFIERS: dict[str, ArchSpec] = {
    "cifar_densenet_bc100": ArchSpec(
        lambda c: DenseNetBC(c), 10, CIFAR_MEAN, CIFAR_STD, "output_layer.weight",
        "the CIFAR-10 DenseNet-BC-100 state dict used by ODIN/DICE/ReAct (densenet100 ... .pt; a copy is "
        "../shared/weights/cifar10_densenet_bc100.pt)",
        lambda net: net.encoder.bn1),  # the final BN on the dense features, like torchvision's norm5
    "cifar_resnet20": ArchSpec(_he_resnet(3), 10, IMAGENET_MEAN, IMAGENET_STD, "linear.weight",
                               _IDELBAYEV.format(d=20), _last_stage),
    "cifar_resnet56": ArchSpec(_he_resnet(9), 10, IMAGENET_MEAN, IMAGENET_STD, "linear.weight",
                               _IDELBAYEV.format(d=56), _last_stage),
    "resnet18_32x32": ArchSpec(
        lambda c: CifarResNet((64, 128, 256, 512), (2,) * 4, "B", "fc", c), 10, OPENOOD_CIFAR_MEAN,
        OPENOOD_CIFAR_STD, "fc.weight",
        "an OpenOOD v1.5 ResNet18_32x32 checkpoint (e.g. cifar10_resnet18_32x32_base_e100_lr0.1_default/s0/"
        "best.ckpt from OpenOOD's download script)", _last_stage),
    "resnet50": ArchSpec(
        TorchvisionResNet50, 1000, IMAGENET_MEAN, IMAGENET_STD, "fc.weight",
        "torchvision's ImageNet ResNet-50 weights resnet50-0676ba61.pth or resnet50-19c8e357.pth "
        "(https://download.pytorch.org/models/), or a timm resnet50 checkpoint",
        lambda net: net.layer4[-1]),  # the reference's target layer (last Bottleneck)
}


# ------------------------------------------------------------------------------------------- the wrapper
class Classifier(nn.Module):
    """A network with its normalisation inside: images in [0, 1] -> logits / penultimate features.

    Frozen (no parameter gradients, BN always in eval mode) unless `frozen=False`; gradients with respect to the
    *input* still flow, as DiffGuard's guidance and Grad-CAM need.
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], name: str = "",
                 weights: str | None = None, frozen: bool = True):
        super().__init__()
        self.net = net
        self.name, self.weights = name, weights
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, 3, 1, 1), persistent=False)
        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)
            self.train(False)

    @property
    def head(self) -> nn.Linear:
        return self.net.head

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def train(self, mode: bool = True) -> Classifier:
        """A frozen classifier stays in eval mode when Lightning puts its parent in train mode."""
        return super().train(mode and not getattr(self, "frozen", False))

    def normalize(self, images: Tensor) -> Tensor:
        return (images.to(self.mean.dtype) - self.mean) / self.std

    def features(self, images: Tensor) -> Tensor:
        return self.net.forward_features(self.normalize(images))

    def logits_and_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.features(images)
        return self.head(feats), feats

    def forward(self, images: Tensor) -> Tensor:
        return self.logits_and_features(images)[0]

    def extra_repr(self) -> str:
        return f"name={self.name}, weights={self.weights or 'random'}"


def build_classifier(name: str, weights: str | None, num_classes: int | None = None,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     frozen: bool = True) -> Classifier:
    """Build classifier `name` (a key of CLASSIFIERS) and load `weights`, a local file.

    `weights=None` means random initialisation and must be asked for explicitly (tests); nothing is downloaded.
    `num_classes` defaults to the file's head (else the architecture's default); `mean`/`std` default to the
    normalisation the published weights were trained with.
    """
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; known: {', '.join(CLASSIFIERS)}")
    spec = CLASSIFIERS[name]
    state, path = None, None
    if weights is not None:
        path = os.path.abspath(os.path.expanduser(str(weights)))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"classifier weights not found: {path}. It should hold {spec.weights_hint}. "
                                    "Nothing is downloaded; put the file there.")
        state = read_state_dict(path)  # torch.load(weights_only=True); unwraps {state_dict}, strips 'module.'
        if num_classes is None and spec.head_key in state:
            num_classes = int(state[spec.head_key].shape[0])
    net = spec.build(num_classes or spec.num_classes)
    if state is not None:  # strict: a mismatch lists every missing, unexpected and wrongly shaped key
        load_state_strict(net, state, f"{name} weights {path}")
    return Classifier(net, mean or spec.mean, std or spec.std, name=name, weights=path, frozen=frozen)
