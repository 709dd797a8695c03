"""Benchmark presets: layouts, groups, one error for every missing path, option checks, and the real offline data."""
from pathlib import Path

import pytest
import torch

from data_helpers import CIFAR10_CLASSES, make_class_tree, make_flat, write_image
from ood_lightning.data import PRESETS, ImageFolderSource, build_benchmark, default_transform


def _cifar10_jpeg_tree(root: Path) -> Path:
    make_class_tree(root / "cifar10" / "train", classes=CIFAR10_CLASSES[:3], per_class=2, ext=".jpg")
    make_class_tree(root / "cifar10" / "test", classes=CIFAR10_CLASSES[:3], per_class=1, ext=".jpg")
    make_flat(root / "tin" / "val", n=4, ext=".jpg")
    make_class_tree(root / "mnist" / "test", classes=("0", "1"), per_class=2, ext=".jpg")
    return root


def test_digits_preset():
    bench = build_benchmark("digits")
    assert bench.id_name == "digits_0_4" and list(bench.ood) == ["digits_5_9"] and bench.groups == {}
    assert (len(bench.id_train), len(bench.id_test), len(bench.ood["digits_5_9"])) == (601, 300, 896)
    assert not set(bench.id_train.source_index) & set(bench.id_test.source_index)
    assert set(bench.id_test.labels) == {0, 1, 2, 3, 4} and set(bench.ood["digits_5_9"].labels) == {-1}
    again = build_benchmark("digits")
    assert again.id_train.fingerprint() == bench.id_train.fingerprint()


def test_digits_preset_subsets():
    bench = build_benchmark("digits", max_per_set=50, seed=3)
    sizes = [len(bench.id_train), len(bench.id_test), len(bench.ood["digits_5_9"])]
    assert sizes == [50, 50, 50]
    assert build_benchmark("digits", max_per_set=50, seed=3).id_test.indices == bench.id_test.indices


def test_cifar10_jpeg_preset_layout(tmp_path):
    bench = build_benchmark("cifar10_jpeg", _cifar10_jpeg_tree(tmp_path), default_transform(8))
    assert bench.id_name == "cifar10" and list(bench.ood) == ["tin", "mnist"]
    assert bench.groups == {"near": ["tin"], "far": ["mnist"]}
    assert bench.id_train.classes == CIFAR10_CLASSES[:3] and bench.id_test.labels == [0, 1, 2]
    assert bench.ood["mnist"].labels == [-1] * 4 and len(bench.ood["tin"]) == 4
    assert bench.ood["tin"][0]["image"].shape == (3, 8, 8)


def test_mnist_0_4_preset_splits_by_file_number(tmp_path):
    for digit in range(10):
        for number in (digit * 100, digit * 100 + 1, digit * 100 + 7, digit * 100 + 15):
            write_image(tmp_path / "mnist" / "test" / str(digit) / f"{number:05d}.jpg", size=(8, 8))
    make_flat(tmp_path / "tin" / "val", n=2, ext=".jpg")
    make_class_tree(tmp_path / "cifar10" / "test", classes=CIFAR10_CLASSES[:2], per_class=1, ext=".jpg")
    bench = build_benchmark("mnist_0_4", tmp_path, default_transform(8))
    assert bench.id_name == "mnist_0_4" and list(bench.ood) == ["mnist_5_9", "tin", "cifar10"]
    assert bench.groups == {"near": ["mnist_5_9"], "far": ["tin", "cifar10"]}
    numbers = {name: [int(path.stem) for path, _ in ds.samples] for name, ds in
               (("train", bench.id_train), ("test", bench.id_test), ("ood", bench.ood["mnist_5_9"]))}
    assert all(n % 5 == 0 for n in numbers["test"]) and not any(n % 5 == 0 for n in numbers["train"])
    assert len(numbers["test"]) == 10 and len(numbers["train"]) == 10 and len(numbers["ood"]) == 20
    assert set(bench.id_train.labels) == set(bench.id_test.labels) == {0, 1, 2, 3, 4}
    assert all(n // 100 >= 5 for n in numbers["ood"]) and set(bench.ood["mnist_5_9"].labels) == {-1}
    assert bench.id_test[0]["image"].shape == (3, 8, 8)


def test_folders_preset(tmp_path):
    make_class_tree(tmp_path / "mine" / "train", per_class=2)
    make_class_tree(tmp_path / "mine" / "test", per_class=1)
    make_flat(tmp_path / "b", n=2)
    make_class_tree(tmp_path / "a", classes=("x",), per_class=3)
    bench = build_benchmark("folders", tmp_path, id_train="mine/train", id_test="mine/test",
                            ood={"zeta": "b", "alpha": str(tmp_path / "a")})
    assert bench.id_name == "mine" and bench.id_train.name == "mine_train"
    assert list(bench.ood) == ["zeta", "alpha"]  # the user's order
    assert bench.ood["alpha"].labels == [-1] * 3 and bench.id_test.labels == [0, 1]
    no_train = build_benchmark("folders", None, id_test=str(tmp_path / "mine" / "test"), ood={"b": str(tmp_path / "b")})
    assert no_train.id_train is None


def test_folders_train_set_is_named_after_its_own_folder(tmp_path):
    """Warnings about unreadable train images name the set: the train folder's name, not the test folder's."""
    make_class_tree(tmp_path / "id_train", per_class=1)
    make_class_tree(tmp_path / "id_test", per_class=1)
    make_class_tree(tmp_path / "cats" / "train", per_class=1)
    make_flat(tmp_path / "o", n=1)
    named = build_benchmark("folders", tmp_path, id_train="id_train", id_test="id_test", ood={"o": "o"})
    assert (named.id_train.name, named.id_test.name) == ("id_train", "id_test")
    split = build_benchmark("folders", tmp_path, id_train="cats/train", id_test="id_test", ood={"o": "o"})
    assert split.id_train.name == "cats_train"


def test_folders_preset_checks(tmp_path):
    make_class_tree(tmp_path / "train", classes=("a", "b"))
    make_class_tree(tmp_path / "test", classes=("a", "c"))
    make_flat(tmp_path / "o")
    with pytest.raises(ValueError, match="id_test"):
        build_benchmark("folders", tmp_path, ood={"o": "o"})
    with pytest.raises(ValueError, match="different classes"):
        build_benchmark("folders", tmp_path, id_train="train", id_test="test", ood={"o": "o"})


def test_every_missing_path_in_one_error(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        build_benchmark("lfdn_cifar10", tmp_path)
    message = str(error.value)
    expected = ["cifar10/cifar-10-batches-py", "cifar100/cifar-100-python", "isun", "svhn/test_32x32.mat",
                "lsun_crop", "lsun_resize", "dtd/images", "places365"]
    for path in expected:
        assert f"- {tmp_path / path}:" in message, path
    assert message.count("cifar-10-batches-py") == 1  # shared by ID train and test, listed once
    assert "OOD set 'isun'" in message and "download=True" in message


def test_download_option_drops_torchvision_paths(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        build_benchmark("lfdn_cifar100", tmp_path, download=True)
    message = str(error.value)
    assert "cifar-100-python" not in message and "test_32x32.mat" not in message
    assert str(tmp_path / "isun") in message and str(tmp_path / "celeba") not in message


def test_openood_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        build_benchmark("openood_v1.5/imagenet200", tmp_path)
    message = str(error.value)
    lists = tmp_path / "benchmark_imglist" / "imagenet200"
    for name in ["train_imagenet200", "test_imagenet200", "test_ssb_hard", "test_ninco", "test_inaturalist",
                 "test_textures", "test_openimage_o"]:
        assert str(lists / f"{name}.txt") in message
    assert str(tmp_path / "images_largescale") in message and str(tmp_path / "images_classic") in message
    assert "train_imagenet200" not in str(pytest.raises(FileNotFoundError, build_benchmark,
                                                            "openood_v1.5/imagenet200", tmp_path, train=False).value)


def test_problems_found_while_building_are_reported_together(tmp_path):
    make_flat(tmp_path / "id")
    for name in ("empty_a", "empty_b"):
        (tmp_path / name).mkdir()
    with pytest.raises(FileNotFoundError) as error:
        build_benchmark("folders", tmp_path, id_test="id", ood={"a": "empty_a", "b": "empty_b"})
    assert "set 'a'" in str(error.value) and "set 'b'" in str(error.value)


def _fake_openood(root: Path, name: str) -> None:
    """Every image list the preset reads, each listing two images that exist."""
    plan = PRESETS[name].plan(root, default_transform())
    for spec in [plan.id_train, plan.id_test, *plan.ood]:
        (list_file, _), (images, _) = spec.needs
        for i in range(2):
            write_image(images / spec.name / f"{i}.png", size=(4, 4))
        list_file.parent.mkdir(parents=True, exist_ok=True)
        list_file.write_text("".join(f"{spec.name}/{i}.png {i}\n" for i in range(2)))


@pytest.mark.parametrize("name", [name for name in PRESETS if name.startswith("openood")])
def test_openood_presets(tmp_path, name):
    _fake_openood(tmp_path, name)
    bench = build_benchmark(name, tmp_path)
    assert bench.id_test.labels == [0, 1] and len(bench.id_train) == 2
    assert all(ds.labels == [-1, -1] for ds in bench.ood.values())
    assert [n for group in bench.groups.values() for n in group] == list(bench.ood) or not bench.groups
    expected = {"openood_v1.5/cifar10": ["cifar100", "tin", "mnist", "svhn", "texture", "places365"],
                "openood_v1.5/imagenet1k": ["ssb_hard", "ninco", "inaturalist", "textures", "openimage_o"],
                "openood_v1.0/imagenet": ["species", "inaturalist", "openimage_o", "imagenet_o"]}
    if name in expected:
        assert list(bench.ood) == expected[name]


def test_unknown_preset_option_and_root_errors(tmp_path):
    with pytest.raises(ValueError, match="presets: .*lfdn_cifar10.*openood_v1.5/cifar10.*folders"):
        build_benchmark("cifar11")
    with pytest.raises(ValueError, match="does not take option.*download"):
        build_benchmark("cifar10_jpeg", tmp_path, download=True)
    with pytest.raises(ValueError, match="(?s)needs root.*cifar10/train"):
        build_benchmark("cifar10_jpeg")


def test_default_transform_shapes():
    from PIL import Image

    image = Image.new("RGB", (40, 20))
    assert default_transform(16)(image).shape == (3, 16, 16)  # squashed to a square
    assert default_transform(16, 12)(image).shape == (3, 12, 12)  # shorter side 16, then centre crop
    assert default_transform()(image).shape == (3, 20, 40)


# --- the real offline data (a seeded sample of ../shared/data) ----------------------------------------------------

def test_real_cifar10_jpegs(real_data_root):
    dataset = ImageFolderSource(real_data_root / "cifar10" / "test")
    assert dataset.classes == CIFAR10_CLASSES and len(dataset) == 200
    assert set(dataset.labels) <= set(range(10)) and len(set(dataset.labels)) == 10
    images = torch.stack([dataset[i]["image"] for i in range(0, 200, 20)])
    assert images.shape == (10, 3, 32, 32) and 0 <= images.min() and images.max() <= 1


def test_real_cifar10_jpeg_preset(real_data_root):
    bench = build_benchmark("cifar10_jpeg", real_data_root, default_transform(64))
    sizes = [len(bench.id_train), len(bench.id_test), len(bench.ood["tin"]), len(bench.ood["mnist"])]
    assert sizes == [100, 200, 40, 40]
    assert bench.id_train.classes == CIFAR10_CLASSES
    for dataset in (bench.id_test, *bench.ood.values()):
        item = dataset[len(dataset) - 1]
        assert item["image"].shape == (3, 64, 64)
    assert set(bench.ood["mnist"].labels) == set(bench.ood["tin"].labels) == {-1}
