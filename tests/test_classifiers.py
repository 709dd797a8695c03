"""Classifiers under protection: the real CIFAR-10 weight files load strictly and classify real JPEGs; key layouts,
normalisation, freezing, and the errors for missing or mismatched weight files."""
import pytest
import torch
from PIL import Image
from torchvision.models import resnet50
from torchvision.transforms.functional import to_tensor

from data_helpers import CIFAR10_CLASSES
from ood_lightning.classifiers import CLASSIFIERS, build_classifier
from ood_lightning.errors import StateDictMismatchError

REAL = [  # (name, file in ../shared/weights, feature dim)
    ("cifar_densenet_bc100", "cifar10_densenet_bc100.pt", 342),
    ("cifar_resnet56", "cifar10_resnet56.th", 64),
    ("cifar_resnet20", "cifar10_resnet20.th", 64),
]


@pytest.fixture(scope="module")
def cifar_test_images(real_data_root):
    """50 real CIFAR-10 test JPEGs (of the seeded sample) with their labels, as [0, 1] tensors."""
    files = sorted((real_data_root / "cifar10" / "test").glob("*/*.jpg"))[::4][:50]
    images = torch.stack([to_tensor(Image.open(f).convert("RGB")) for f in files])
    labels = torch.tensor([CIFAR10_CLASSES.index(f.parent.name) for f in files])
    return images, labels


@pytest.mark.parametrize("name,file,dim", REAL)
def test_real_weights_classify_real_cifar10(name, file, dim, shared_dir, cifar_test_images):
    images, labels = cifar_test_images
    model = build_classifier(name, str(shared_dir / "weights" / file))
    assert model.num_classes == 10 and model.feature_dim == dim
    with torch.no_grad():
        logits, feats = model.logits_and_features(images)
    assert feats.shape == (len(images), dim)
    torch.testing.assert_close(logits, model.head(feats))
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    # ~83-84% on these JPEGs; a wrong normalisation or layer wiring falls to chance
    assert accuracy >= 0.6, f"{name}: {accuracy:.2%} on {len(images)} real CIFAR-10 JPEGs"


def test_resnet18_32x32_has_openood_layout():
    model = build_classifier("resnet18_32x32", None)
    keys = model.net.state_dict().keys()
    assert {"conv1.weight", "bn1.running_var", "layer1.0.conv2.weight", "layer2.0.shortcut.0.weight",
            "layer2.0.shortcut.1.running_mean", "layer4.1.bn2.weight", "fc.weight", "fc.bias"} <= set(keys)
    assert not any(k.startswith(("layer1.0.shortcut", "layer2.1.shortcut")) for k in keys)  # identity shortcuts
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # OpenOOD's ResNet18_32x32, 10 classes
    assert model.feature_dim == 512 and model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_resnet50_has_torchvision_layout_and_file_round_trip(tmp_path):
    model = build_classifier("resnet50", None, num_classes=7)
    reference = resnet50(num_classes=7).state_dict()
    assert list(model.net.state_dict()) == list(reference)
    assert model.feature_dim == 2048
    torch.save({"module." + k: v for k, v in model.net.state_dict().items()}, tmp_path / "r50.pth")
    again = build_classifier("resnet50", str(tmp_path / "r50.pth"))  # num_classes read from the file's head
    assert again.num_classes == 7
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(again(x), model(x))


def test_normalisation_travels_with_the_model():
    model = build_classifier("cifar_resnet20", None, mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 0.2])
    x = torch.rand(3, 3, 32, 32)
    mean, std = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1), torch.tensor([0.5, 0.25, 0.2]).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), model.head(model.net.forward_features((x - mean) / std)))
    assert build_classifier("cifar_resnet20", None).mean.flatten().tolist() == pytest.approx(CLASSIFIERS[
        "cifar_resnet20"].mean)


def test_frozen_eval_but_input_gradients_flow():
    model = build_classifier("cifar_resnet20", None)
    assert not any(p.requires_grad for p in model.parameters())
    torch.nn.Sequential(model).train()
    assert not model.training and not any(m.training for m in model.modules())
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    model(x)[:, 0].sum().backward()  # DiffGuard's guidance and Grad-CAM differentiate w.r.t. the input
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "densenet.pt"
    with pytest.raises(FileNotFoundError, match="densenet.pt") as err:
        build_classifier("cifar_densenet_bc100", str(path))
    assert str(path) in str(err.value) and "DenseNet-BC-100" in str(err.value)


def test_mismatched_weights_name_the_key(tmp_path):
    state = build_classifier("cifar_resnet20", None).net.state_dict()
    state["layer2.1.conv1.weight"] = torch.zeros(32, 32, 1, 1)
    torch.save({"best_prec1": 0.0, "state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "bad.th")
    with pytest.raises(StateDictMismatchError, match=r"wrong shape for layer2\.1\.conv1\.weight"):
        build_classifier("cifar_resnet20", str(tmp_path / "bad.th"))
    del state["layer2.1.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad2.th")
    with pytest.raises(StateDictMismatchError, match=r"(?s)missing layer2\.1\.conv1\.weight.*unexpected extra\.weight"):
        build_classifier("cifar_resnet20", str(tmp_path / "bad2.th"))


def test_unknown_architecture():
    with pytest.raises(ValueError, match="known: cifar_densenet_bc100"):
        build_classifier("vgg", None)



@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_each_registry_entry_names_the_final_feature_map_for_grad_cam(name):
    """ArchSpec.cam_layer is the block whose output the head pools: its activation is a spatial map with the
    feature width."""
    model = build_classifier(name, None)
    layer = CLASSIFIERS[name].cam_layer(model.net)
    assert any(module is layer for module in model.net.modules())
    seen = []
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(output))
    try:
        with torch.no_grad():
            model(torch.rand(2, 3, 32, 32))
    finally:
        handle.remove()
    (activation,) = seen
    assert activation.ndim == 4 and activation.shape[:2] == (2, model.feature_dim)


# ------------------------------------------------------------------------------------- your own classifier
def test_a_timm_model_from_a_local_weights_file(tmp_path):
    """timm:<name> builds without downloading, reads the class count from the file, loads strictly and exposes the
    logits, the pooled penultimate feature, the maps before the pool and the Grad-CAM layer."""
    import timm

    torch.manual_seed(0)
    reference = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    torch.save(reference.state_dict(), tmp_path / "tiny.pth")
    model = build_classifier("timm:test_resnet", str(tmp_path / "tiny.pth"), mean=[0.5] * 3, std=[0.25] * 3)
    x = torch.rand(2, 3, 32, 32)
    expected = reference((x - 0.5) / 0.25)
    logits, feats = model.logits_and_features(x)
    torch.testing.assert_close(logits, expected)
    assert model.num_classes == 3 and feats.shape == (2, model.feature_dim)
    torch.testing.assert_close(model.logits_from_maps(model.feature_maps(x)), expected)
    assert model.cam_layer is model.net.model.layer4
    assert model.mean.flatten().tolist() == [0.5] * 3
    default = build_classifier("timm:test_resnet", str(tmp_path / "tiny.pth"))  # timm's own normalisation
    torch.testing.assert_close(default.mean.flatten(), torch.tensor(reference.pretrained_cfg["mean"]))


class _Own(torch.nn.Module):
    """A user's own network: maps -> pool -> dropout -> linear."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.maps = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU())
        self.drop = torch.nn.Dropout(0.5)
        self.out = torch.nn.Linear(6, classes)

    def forward(self, x):
        return self.out(self.drop(self.maps(x).mean((2, 3))))


def test_any_module_by_class_path_from_a_yaml_spec(tmp_path):
    """A spec file works wherever a classifier name does (ClassifierBaselines here); its features are the head's
    input, its maps the named layer's output, and wrong layer names are caught on the first batch."""
    import yaml

    from ood_lightning.detectors.baselines import ClassifierBaselines

    torch.manual_seed(0)
    torch.save(_Own().state_dict(), tmp_path / "own.pt")
    spec = {"class_path": f"{__name__}._Own", "init_args": {"classes": 3}, "mean": [0.5] * 3, "std": [0.5] * 3,
            "feature_maps_layer": "maps", "cam_layer": "maps.0"}
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(spec))
    det = ClassifierBaselines(str(tmp_path / "own.yaml"), str(tmp_path / "own.pt"), scores=["mls"])
    model = det.classifier
    x = torch.rand(4, 3, 9, 9)
    logits, feats = model.logits_and_features(x)
    torch.testing.assert_close(logits, model.net.model((x - 0.5) / 0.5))
    torch.testing.assert_close(feats, model.net.model.maps((x - 0.5) / 0.5).mean((2, 3)))
    torch.testing.assert_close(model.logits_from_maps(model.feature_maps(x)), logits)
    assert model.cam_layer is model.net.model.maps[0] and model.feature_dim == 6
    wrong = build_classifier({**spec, "feature_layer": "maps"}, str(tmp_path / "own.pt"))
    with pytest.raises(ValueError, match="not its head applied to the penultimate feature"):
        wrong.features(x)
    with pytest.raises(ValueError, match="has no module 'nope'"):
        build_classifier({**spec, "cam_layer": "nope"}, None)
    with pytest.raises(ValueError, match="give the normalisation"):
        build_classifier({"class_path": f"{__name__}._Own"}, None)
    with pytest.raises(StateDictMismatchError):
        build_classifier({**spec, "init_args": {"classes": 4}}, str(tmp_path / "own.pt"))
