"""Frozen multi-layer features: real Lite0/1/2 weights, group sizes, the reference neck, group z-score, weight files,
cache identity and the b4 static TF-"same" padding of the LFDN reference."""
import os
import shutil

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers.padding import pad_same_arg
from torch.func import functional_call

from ood_lightning.backbones import (
    MultiLayerFeatures,
    StaticSameConv2d,
    freeze_same_padding,
    group_zscore,
    load_lukemelas_into,
    package_weights_path,
)

B4_GROUPS = [24, 32, 56, 160, 448]


@pytest.fixture(scope="module")
def lite0_file():
    return package_weights_path("tf_efficientnet_lite0")  # a requirement: a missing package fails, never skips


@pytest.fixture(scope="module")
def lite0_random():
    return MultiLayerFeatures(weights=None)


@pytest.fixture(scope="module")
def b4_static():
    return MultiLayerFeatures("tf_efficientnet_b4", weights=None, static_same_padding=380)


def test_lite0_package_weights_classify_a_daisy(lite0_file):
    """The package file mapped onto timm's full tf_efficientnet_lite0 (head included) is a working classifier."""
    load_sample_image = pytest.importorskip("sklearn.datasets").load_sample_image
    model = load_lukemelas_into(timm.create_model("tf_efficientnet_lite0", pretrained=False), lite0_file).eval()
    image = torch.tensor(load_sample_image("flower.jpg")).permute(2, 0, 1).float().div(255)[None]
    image = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        logits = model((image - 0.5) / 0.5)
    assert logits.argmax(1).item() == 985  # ImageNet "daisy"

    features = MultiLayerFeatures()  # the default: the package weights
    feature_state = features.backbone.state_dict()
    for key, value in model.state_dict().items():
        if key in feature_state:
            assert torch.equal(feature_state[key], value), key


def sample_photo(name: str, side: int) -> torch.Tensor:
    """One of scikit-learn's two real photos, centre-cropped to a square and resized to side x side, in [0, 1]."""
    image = torch.tensor(pytest.importorskip("sklearn.datasets").load_sample_image(name)).permute(2, 0, 1)
    h, w = image.shape[-2:]
    s = min(h, w)
    image = image[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s].float().div(255)[None]
    return F.interpolate(image, size=(side, side), mode="bilinear", antialias=True, align_corners=False)


@pytest.mark.parametrize("name, side, groups", [("tf_efficientnet_lite1", 240, [16, 24, 40, 112, 320]),
                                                ("tf_efficientnet_lite2", 260, [16, 24, 48, 120, 352])])
def test_lite1_lite2_package_weights_map_strictly_and_classify_a_palace(name, side, groups):
    """Every tensor of the package file lands on timm's full model (head included) with its shape, and the result
    is a working ImageNet classifier: scikit-learn's photo of the Summer Palace, at the weights' native size and
    with their TF normalisation (0.5 / 0.5), comes out as class 698, "palace". (The dahlia of the Lite0 test is
    not an ImageNet class; Lite2 calls it "honeycomb", so it cannot check Lite2.)"""
    path = package_weights_path(name)
    in_file = [v for k, v in torch.load(path, map_location="cpu", weights_only=True).items()
               if not k.endswith("num_batches_tracked")]
    model = load_lukemelas_into(timm.create_model(name, pretrained=False), path).eval()
    loaded = [v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert len(loaded) == len(in_file)
    assert all(torch.equal(a, b) for a, b in zip(loaded, in_file))
    with torch.no_grad():
        logits = model((sample_photo("china.jpg", side) - 0.5) / 0.5)
    assert logits.argmax(1).item() == 698

    features = MultiLayerFeatures(name, weights="package")
    assert features.group_sizes == groups and features.image_mean == (0.5, 0.5, 0.5)
    assert features.image_std == (0.5, 0.5, 0.5)
    feature_state = features.backbone.state_dict()
    assert all(torch.equal(feature_state[k], v) for k, v in model.state_dict().items() if k in feature_state)


def test_lukemelas_pair_of_another_kind_is_named(lite0_file, tmp_path):
    """Position mapping pairs the i-th tensors; a pair with equal shapes but different kinds (a BN weight where
    the file has its bias) is refused by name, not loaded."""
    state = torch.load(lite0_file, map_location="cpu", weights_only=True)
    swapped = {("_bn0.bias" if k == "_bn0.weight" else "_bn0.weight" if k == "_bn0.bias" else k): v
               for k, v in state.items()}
    path = tmp_path / "swapped.pth"
    torch.save(swapped, path)
    with pytest.raises(ValueError, match=r"_bn0\.bias paired with bn1\.weight"):
        MultiLayerFeatures(weights=str(path))


@pytest.mark.parametrize("name, groups", [("tf_efficientnet_lite0", [16, 24, 40, 112, 320]),
                                          ("resnet50", [256, 512, 1024])])
def test_group_sizes_and_feature_dim(name, groups):
    model = MultiLayerFeatures(name, weights=None)
    assert model.group_sizes == groups and model.feature_dim == sum(groups)
    out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, sum(groups)) and out.dtype == torch.float32


def test_b4_group_sizes_match_the_reference(b4_static):
    assert b4_static.group_sizes == B4_GROUPS and b4_static.feature_dim == 720
    assert b4_static.reductions == [2, 4, 8, 16, 32]
    assert b4_static.image_mean == (0.485, 0.456, 0.406)  # timm's tf_efficientnet_b4 cfg: ImageNet, as the reference
    assert b4_static(torch.rand(1, 3, 64, 64)).shape == (1, 720)


def test_neck_matches_upsampling_bilinear_concat_gap(lite0_random):
    images = torch.rand(3, 3, 128, 128)
    normalised = (images - 0.5) / 0.5
    with torch.no_grad():
        maps = lite0_random.backbone(normalised)
        resized = [nn.UpsamplingBilinear2d(scale_factor=r / 16)(m) for m, r in zip(maps, [2, 4, 8, 16, 32])]
        expected = nn.AdaptiveAvgPool2d(1)(torch.cat(resized, 1)).flatten(1)
    assert {tuple(m.shape[-2:]) for m in resized} == {(8, 8)}
    torch.testing.assert_close(lite0_random(images), expected, rtol=1e-5, atol=1e-6)
    # align-corners down-sampling point-samples: resize-then-pool is not the plain GAP of the stride-2 map
    assert not torch.allclose(expected[:, :16], maps[0].mean((2, 3)), atol=1e-4)


class FixedMaps(nn.Module):
    """A stand-in backbone returning given feature maps, whatever the images."""

    def __init__(self, maps):
        super().__init__()
        self.maps = maps

    def forward(self, images):
        return [m.expand(len(images), -1, -1, -1) for m in self.maps]


def test_neck_values_worked_out_by_hand():
    """The neck on hand-made maps of a 64 px image. A stride-8 map (8 x 8) is resized by 1/2 to the stride-16 grid with
    align_corners=True: rows are sampled at i * 7/3 = 0, 7/3, 14/3, 7 and linearly interpolated. For the map r^2
    (row r = 0..7) that gives 0, 4 + 5/3, 16 + 9 * 2/3 = 22, 49, mean 115/6 = 19.17, where plain average pooling gives
    140/8 = 17.5 (and align_corners=False samples 0.5, 2.5, 4.5, 6.5, mean 17.5 too). A stride-32 map (2 x 2) is
    up-sampled to 4 x 4; a constant stays constant. Taps are concatenated in order."""
    features = MultiLayerFeatures(weights=None)
    r = torch.arange(8.0)
    squares = torch.stack([r[:, None] ** 2 * torch.ones(8), torch.ones(8, 1) * r ** 2])[None]  # r^2 and c^2
    features.backbone = FixedMaps([squares, torch.full((1, 1, 2, 2), 5.0)])
    features.reductions = [8, 32]
    out = features(torch.rand(2, 3, 64, 64))
    torch.testing.assert_close(out, torch.tensor([[115 / 6, 115 / 6, 5.0]] * 2))
    assert squares.mean().item() == pytest.approx(17.5)


def test_group_zscore_matches_reference_loop():
    x = torch.randn(4, 720) * 3 + 1
    z = group_zscore(x, B4_GROUPS)
    torch.testing.assert_close(z.pow(2).sum(1), torch.full((4,), 715.0), rtol=1e-3, atol=0)
    start, parts = 0, []
    for n in B4_GROUPS:
        g = x[:, start:start + n]
        parts.append((g - g.mean(1, keepdim=True)) / (torch.std(g, 1, unbiased=True, keepdim=True) + 1e-5))
        start += n
    torch.testing.assert_close(z, torch.cat(parts, 1))
    with pytest.raises(ValueError):
        group_zscore(x, [24, 32])


def test_frozen_and_always_eval(lite0_random):
    assert not any(p.requires_grad for p in lite0_random.parameters())
    lite0_random.train()
    assert not any(m.training for m in lite0_random.modules())
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    first, second = lite0_random(images), lite0_random(images)
    assert torch.equal(first, second) and not first.requires_grad


def test_channels_last_gives_the_same_features(lite0_random):
    assert lite0_random.channels_last
    plain = MultiLayerFeatures(weights=None, channels_last=False)
    plain.load_state_dict(lite0_random.state_dict())
    images = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(plain(images), lite0_random(images), rtol=1e-4, atol=1e-5)


def test_missing_weight_file_names_path_and_source(tmp_path):
    missing = tmp_path / "efficientnet-b4-6ed6700e.pth"
    with pytest.raises(FileNotFoundError, match="efficientnet-b4-6ed6700e.pth") as err:
        MultiLayerFeatures("tf_efficientnet_b4", weights=str(missing))
    assert str(missing) in str(err.value) and "lukemelas" in str(err.value)
    with pytest.raises(ValueError, match="package"):
        MultiLayerFeatures("resnet50", weights="package")


def test_wrong_shape_lukemelas_tensor_is_named(lite0_file, tmp_path):
    state = torch.load(lite0_file, map_location="cpu", weights_only=True)
    state["_blocks.3._project_conv.weight"] = torch.zeros(41, 144, 1, 1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"_blocks\.3\._project_conv\.weight"):
        MultiLayerFeatures(weights=str(path))
    del state["_blocks.3._project_conv.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match="tensors"):
        MultiLayerFeatures(weights=str(path))


def test_package_weights_unless_explicitly_random(lite0_file, lite0_random):
    stem = torch.load(lite0_file, map_location="cpu", weights_only=True)["_conv_stem.weight"]
    assert torch.equal(MultiLayerFeatures().backbone.conv_stem.weight, stem)
    assert not torch.equal(lite0_random.backbone.conv_stem.weight, stem)
    assert "random" in lite0_random.identity()


def test_torchvision_and_timm_files_load_strictly(tmp_path):
    """A torchvision-style file (no BN counters) and a timm training checkpoint (DDP prefix) load by key."""
    source = timm.create_model("resnet18", pretrained=False).state_dict()
    tv = tmp_path / "resnet18.pth"
    torch.save({k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}, tv)
    model = MultiLayerFeatures("resnet18", weights=str(tv))
    assert model.out_indices == (0, 1, 2, 3, 4)  # any other model: every feature timm describes
    assert torch.equal(model.backbone.layer4[1].conv2.weight, source["layer4.1.conv2.weight"])

    ckpt = tmp_path / "resnet18_ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.items()}}, ckpt)
    model = MultiLayerFeatures("resnet18", weights=str(ckpt), weights_format="timm", out_indices=(1, 2))
    assert torch.equal(model.backbone.layer2[0].conv1.weight, source["layer2.0.conv1.weight"])

    safetensors_torch = pytest.importorskip("safetensors.torch")
    other_head = dict(source, **{"fc.weight": torch.zeros(21, 512), "fc.bias": torch.zeros(21)})  # unused head
    st = tmp_path / "model.safetensors"
    safetensors_torch.save_file(other_head, st)
    model = MultiLayerFeatures("resnet18", weights=str(st), out_indices=(3,))
    assert torch.equal(model.backbone.layer3[1].conv2.weight, source["layer3.1.conv2.weight"])

    del source["layer3.0.bn1.running_var"]
    torch.save(source, tv)
    with pytest.raises(ValueError, match=r"missing.*layer3\.0\.bn1\.running_var"):
        MultiLayerFeatures("resnet18", weights=str(tv))


def test_identity_tracks_everything_that_changes_features(lite0_file, tmp_path):
    base = MultiLayerFeatures(weights=None).identity()
    assert MultiLayerFeatures(weights=None).identity() == base
    assert MultiLayerFeatures(weights=None, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)).identity() != base
    assert MultiLayerFeatures(weights=None, out_indices=(1, 2, 3, 4)).identity() != base
    assert MultiLayerFeatures(weights=None, static_same_padding=224).identity() != base

    copy = tmp_path / "lite0.pth"
    shutil.copyfile(lite0_file, copy)
    model = MultiLayerFeatures(weights=str(copy))
    before = model.identity()
    assert str(copy) in before and before != MultiLayerFeatures().identity()
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert model.identity() != before


def test_static_padding_equals_dynamic_at_its_own_size(lite0_random):
    images = torch.rand(1, 3, 224, 224)
    dynamic = lite0_random(images)
    model = MultiLayerFeatures(weights=None)
    model.load_state_dict(lite0_random.state_dict())
    assert freeze_same_padding(model.backbone, 224) == 5
    torch.testing.assert_close(model(images), dynamic, rtol=1e-5, atol=1e-6)


def test_b4_static_380_padding_differs_from_dynamic_only_in_block_6(b4_static):
    """docs/lfdn.md (Encoder): at 224 px the reference's static (380 px) pads differ only at blocks.2.0.conv_dw."""
    backbone = b4_static.backbone
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0].shape[-2:]))
             for name, m in backbone.named_modules() if isinstance(m, StaticSameConv2d)]
    meta = {k: v.to("meta") for k, v in backbone.state_dict(keep_vars=True).items()}
    with torch.no_grad():
        maps = functional_call(backbone, meta, (torch.zeros(1, 3, 224, 224, device="meta"),))
    for h in hooks:
        h.remove()
    assert [m.shape[-1] for m in maps] == [112, 56, 28, 14, 7]
    assert len(seen) == 5  # the stem and the four stride-2 depthwise convs
    dynamic = {name: tuple(pad_same_arg(size, backbone.get_submodule(name).kernel_size,
                                        backbone.get_submodule(name).stride)) for name, size in seen.items()}
    differ = {name for name in seen if backbone.get_submodule(name).pad != dynamic[name]}
    assert differ == {"blocks.2.0.conv_dw"}
    assert backbone.get_submodule("blocks.2.0.conv_dw").pad == (2, 2, 2, 2)
    assert dynamic["blocks.2.0.conv_dw"] == (1, 2, 1, 2)
