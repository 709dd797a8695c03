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
from collections.abc import Callable, Mapping, Sequence
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


class _PooledMaps:
    """The written-out networks end in maps -> global average pool -> `head`: the penultimate feature is the pooled
    last feature map, which map-based detectors (ASH, SCALE, ReAct) read before the pool."""

    def pool_maps(self, maps: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(maps, 1).flatten(1)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.pool_maps(self.forward_feature_maps(x))


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


class DenseNetBC(_PooledMaps, nn.Module):
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

    def forward_feature_maps(self, x: Tensor) -> Tensor:
        e = self.encoder
        x = e.trans2(e.block2(e.trans1(e.block1(e.conv1(x)))))
        return F.relu(e.bn1(e.block3(x)))


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


class CifarResNet(_PooledMaps, nn.Module):
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

    def forward_feature_maps(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x


class TorchvisionResNet50(_PooledMaps, ResNet):
    """torchvision's ResNet-50 (timm's `resnet50` uses the same key names); features = the 2048-d pooled vector."""

    def __init__(self, num_classes: int = 1000):
        super().__init__(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)

    @property
    def head(self) -> nn.Linear:
        return self.fc

    def forward_feature_maps(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


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


# ------------------------------------------------------------------------------- a user's own classifier
class TimmNet(nn.Module):
    """Any timm classifier: feature maps from `forward_features`, the penultimate vector from
    `forward_head(pre_logits=True)` (timm's own pool), the head from `get_classifier()` (an nn.Linear)."""

    def __init__(self, model: nn.Module, cam_layer: str | None = None):
        super().__init__()
        self.model = model
        if not isinstance(model.get_classifier(), nn.Linear):
            raise ValueError(f"timm model {type(model).__name__}'s classifier is {model.get_classifier()!r}, not an "
                             "nn.Linear: ViM, DICE and the other head-based detectors need W and b")
        info = getattr(model, "feature_info", None)
        self.cam_name = cam_layer or (info[-1]["module"] if info else None)

    @property
    def head(self) -> nn.Linear:
        return self.model.get_classifier()

    def forward_feature_maps(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)

    def pool_maps(self, maps: Tensor) -> Tensor:
        return self.model.forward_head(maps, pre_logits=True)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.pool_maps(self.forward_feature_maps(x))

    def cam_module(self) -> nn.Module:
        if self.cam_name is None:
            raise ValueError("this timm model lists no feature_info: name its Grad-CAM layer (cam_layer)")
        return _module(self.model, self.cam_name)


class HookedNet(nn.Module):
    """Any nn.Module whose output is its classification head's output: the penultimate feature is the head's input
    (or the flattened output of `feature_layer`), the feature maps the output of `feature_maps_layer`, which the
    network must global-average-pool into the penultimate feature. Both claims are checked on the first batch."""

    def __init__(self, model: nn.Module, head: str | None = None, feature_layer: str | None = None,
                 feature_maps_layer: str | None = None, cam_layer: str | None = None):
        super().__init__()
        self.model = model
        linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        self.head_name = head or (linears[-1] if linears else None)
        if self.head_name is None or not isinstance(_module(model, self.head_name), nn.Linear):
            raise ValueError(f"the classifier's head must be an nn.Linear named by 'head' (its nn.Linear modules: "
                             f"{linears or 'none'})")
        self.feature_layer, self.maps_layer, self.cam_name = feature_layer, feature_maps_layer, cam_layer
        for name in (feature_layer, feature_maps_layer, cam_layer):
            if name is not None:
                _module(model, name)
        self._checked: set[str] = set()

    @property
    def head(self) -> nn.Linear:
        return self.model.get_submodule(self.head_name)

    def _run(self, x: Tensor, layer: str, take_input: bool = False) -> tuple[Tensor, Tensor]:
        """(the network's output, the output (or input) of module `layer`) from one forward pass."""
        seen = {}
        if take_input:
            handle = self.model.get_submodule(layer).register_forward_pre_hook(lambda m, a: seen.update(v=a[0]))
        else:
            handle = self.model.get_submodule(layer).register_forward_hook(lambda m, a, out: seen.update(v=out))
        try:
            out = self.model(x)
        finally:
            handle.remove()
        if "v" not in seen:
            raise RuntimeError(f"module {layer!r} of the classifier did not run in its forward pass")
        return out, seen["v"]

    def forward_features(self, x: Tensor) -> Tensor:
        if self.feature_layer is None:
            logits, feats = self._run(x, self.head_name, take_input=True)
        else:
            logits, feats = self._run(x, self.feature_layer)
            feats = feats.flatten(1)
        self._check("head", logits, lambda: self.head(feats),
                    "the network's output is not its head applied to the penultimate feature: name the right "
                    "'head' / 'feature_layer'")
        return feats

    def forward_feature_maps(self, x: Tensor) -> Tensor:
        if self.maps_layer is None:
            raise ValueError("map-based detectors (ASH, SCALE, ReAct, ...) need the classifier's "
                             "'feature_maps_layer': the module whose output the network pools into its features")
        _, maps = self._run(x, self.maps_layer)
        self._check("maps", self.forward_features(x), lambda: self.pool_maps(maps),
                    f"the penultimate feature is not the global average pool of {self.maps_layer!r}'s output")
        return maps

    def pool_maps(self, maps: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(maps, 1).flatten(1)

    def cam_module(self) -> nn.Module:
        if self.cam_name is None:
            raise ValueError("name the classifier's Grad-CAM layer ('cam_layer') to use Grad-CAM")
        return self.model.get_submodule(self.cam_name)

    def _check(self, what: str, expected: Tensor, got: Callable[[], Tensor], message: str) -> None:
        if what in self._checked:
            return
        try:
            with torch.no_grad():
                value = got()
            same = value.shape == expected.shape and torch.allclose(value.float(), expected.float(), rtol=1e-3,
                                                                    atol=1e-4)
        except RuntimeError as error:  # e.g. the head cannot take a wrongly named layer's output
            raise ValueError(f"classifier {type(self.model).__name__}: {message} ({error})") from None
        if not same:
            raise ValueError(f"classifier {type(self.model).__name__}: {message}")
        self._checked.add(what)


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ValueError(f"{type(model).__name__} has no module {name!r}; its modules: "
                         f"{', '.join(names[:40])}{' ...' if len(names) > 40 else ''}") from None


# ------------------------------------------------------------------------------------------- the wrapper
class Classifier(nn.Module):
    """A network with its normalisation inside: images in [0, 1] -> logits / penultimate features / feature maps.

    `net` provides `forward_features` (penultimate vector) and `head` (the final nn.Linear); map-based detectors
    also use `forward_feature_maps` and `pool_maps` (maps -> penultimate vector). Frozen (no parameter gradients,
    BN always in eval mode) unless `frozen=False`; gradients with respect to the *input* still flow, as DiffGuard's
    guidance, Grad-CAM, ODIN and GradNorm need.
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

    @property
    def cam_layer(self) -> nn.Module:
        """The module whose activations Grad-CAM weighs (the last convolutional block, before the pool)."""
        if self.name in CLASSIFIERS:
            return CLASSIFIERS[self.name].cam_layer(self.net)
        if hasattr(self.net, "cam_module"):
            return self.net.cam_module()
        raise ValueError(f"classifier {self.name or type(self.net).__name__} names no Grad-CAM layer")

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

    def feature_maps(self, images: Tensor) -> Tensor:
        """The last feature maps [B, C, H, W], before the pool that makes the penultimate feature."""
        if not hasattr(self.net, "forward_feature_maps"):
            raise ValueError(f"classifier {self.name or type(self.net).__name__} exposes no feature maps")
        return self.net.forward_feature_maps(self.normalize(images))

    def logits_from_maps(self, maps: Tensor) -> Tensor:
        """The rest of the network after `feature_maps`: pool, then head."""
        return self.head(self.net.pool_maps(maps))

    def forward(self, images: Tensor) -> Tensor:
        return self.logits_and_features(images)[0]

    def extra_repr(self) -> str:
        return f"name={self.name}, weights={self.weights or 'random'}"


# ------------------------------------------------------------------------------------------------ building
SPEC_KEYS = {"timm", "class_path", "init_args", "mean", "std", "head", "feature_layer", "feature_maps_layer",
             "cam_layer"}


def build_classifier(name: str | Mapping, weights: str | None, num_classes: int | None = None,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     frozen: bool = True) -> Classifier:
    """Build a classifier and load `weights`, a local file (strictly: every key, every shape).

    `name` is one of
    - a key of CLASSIFIERS (the written-out architectures above);
    - `timm:<model name>`: any timm classifier, built without downloading (normalisation: timm's pretrained config
      unless mean/std are given);
    - a spec (a mapping, or the path of a YAML file holding one, so that every detector's `classifier` argument
      takes it): `class_path` + `init_args` of any nn.Module whose output is its logits, or `timm: <model name>`;
      `mean` and `std` (required for class_path), and optionally `head` (the final nn.Linear's module name; default
      the last nn.Linear), `feature_layer` (module whose flattened output is the penultimate feature; default the
      head's input), `feature_maps_layer` (whose output is pooled into that feature, for ASH / SCALE / ReAct on
      maps) and `cam_layer` (DiffGuard's Grad-CAM layer; timm default: its last feature stage).
    `weights=None` means random initialisation and must be asked for explicitly (tests); nothing is downloaded.
    `num_classes` defaults to the file's head (else the architecture's default); `mean`/`std` arguments override
    the normalisation the weights expect.
    """
    if isinstance(name, str) and name.startswith("timm:"):
        name = {"timm": name[len("timm:"):]}
    elif isinstance(name, str) and name.endswith((".yaml", ".yml")):
        name = _read_spec(name)
    if isinstance(name, Mapping):
        return _build_from_spec(dict(name), weights, num_classes, mean, std, frozen)
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; known: {', '.join(CLASSIFIERS)}, 'timm:<model name>', or "
                         "a spec (class_path + init_args, mean, std, ...; see ood_lightning.classifiers."
                         "build_classifier) as a mapping or a YAML file")
    spec = CLASSIFIERS[name]
    state, path = _read_weights(weights, spec.weights_hint)
    if state is not None and num_classes is None and spec.head_key in state:
        num_classes = int(state[spec.head_key].shape[0])
    net = spec.build(num_classes or spec.num_classes)
    if state is not None:  # strict: a mismatch lists every missing, unexpected and wrongly shaped key
        load_state_strict(net, state, f"{name} weights {path}")
    return Classifier(net, mean or spec.mean, std or spec.std, name=name, weights=path, frozen=frozen)


def _read_spec(path: str) -> dict:
    import yaml

    full = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(full):
        raise FileNotFoundError(f"classifier spec not found: {full} (a YAML mapping with class_path + init_args or "
                                "timm, mean, std, head, feature_layer, feature_maps_layer, cam_layer)")
    with open(full) as f:
        spec = yaml.safe_load(f)
    if not isinstance(spec, Mapping):
        raise ValueError(f"classifier spec {full} must hold a mapping, not {type(spec).__name__}")
    return dict(spec)


def _read_weights(weights: str | None, hint: str) -> tuple[dict | None, str | None]:
    if weights is None:
        return None, None
    path = os.path.abspath(os.path.expanduser(str(weights)))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"classifier weights not found: {path}. It should hold {hint}. "
                                "Nothing is downloaded; put the file there.")
    return read_state_dict(path), path  # torch.load(weights_only=True); unwraps {state_dict}, strips 'module.'


def _build_from_spec(spec: dict, weights: str | None, num_classes: int | None, mean: Sequence[float] | None,
                     std: Sequence[float] | None, frozen: bool) -> Classifier:
    unknown = set(spec) - SPEC_KEYS
    if unknown or ("timm" in spec) == ("class_path" in spec):
        raise ValueError(f"a classifier spec has either 'timm' or 'class_path' (+ init_args) and optionally "
                         f"{', '.join(sorted(SPEC_KEYS - {'timm', 'class_path', 'init_args'}))}; got {sorted(spec)}")
    mean, std = mean or spec.get("mean"), std or spec.get("std")
    if "timm" in spec:
        import timm

        model_name = spec["timm"]
        state, path = _read_weights(weights, f"a state dict of timm's {model_name}")
        model = timm.create_model(model_name, pretrained=False)  # pretrained=False: nothing is downloaded
        head_key = f"{model.pretrained_cfg.get('classifier', 'fc')}.weight"
        if num_classes is None and state is not None and head_key in state:
            num_classes = int(state[head_key].shape[0])
        if num_classes is not None and num_classes != model.num_classes:
            model.reset_classifier(num_classes)
        mean, std = mean or model.pretrained_cfg["mean"], std or model.pretrained_cfg["std"]
        net, label, what = TimmNet(model, spec.get("cam_layer")), f"timm:{model_name}", model
    else:
        from ood_lightning.cli_messages import load_class

        if mean is None or std is None:
            raise ValueError(f"classifier {spec['class_path']}: give the normalisation its weights expect (mean, "
                             "std in the spec)")
        model = load_class(spec["class_path"])(**(spec.get("init_args") or {}))
        state, path = _read_weights(weights, f"a state dict of {spec['class_path']}")
        net = HookedNet(model, spec.get("head"), spec.get("feature_layer"), spec.get("feature_maps_layer"),
                        spec.get("cam_layer"))
        label, what = spec["class_path"], model
    if state is not None:
        load_state_strict(what, state, f"{label} weights {path}")
    return Classifier(net, mean, std, name=label, weights=path, frozen=frozen)
