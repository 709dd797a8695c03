"""The Tiny-ImageNet validation / test halves: a fixed function of the file names, and the preset that serves them
as separate OOD sets."""
import random

import pytest

from data_helpers import CIFAR10_CLASSES, make_class_tree, write_image
from ood_lightning.data import build_benchmark, default_transform
from ood_lightning.data.presets import tin_half


def test_halves_follow_the_file_number():
    assert [tin_half(f"val_{n}.jpg") for n in (0, 1, 2, 9998, 9999)] == ["val", "test", "val", "val", "test"]
    halves = [tin_half(f"val_{n}.jpg") for n in range(10000)]
    assert halves.count("val") == halves.count("test") == 5000


def test_halves_depend_on_the_name_only():
    """The same name gives the same half wherever the file lies, whatever else the folder holds, in any order."""
    names = [f"val_{n}.jpg" for n in range(200)]
    shuffled = random.Random(0).sample(names, len(names))
    assert {n: tin_half(n) for n in shuffled} == {n: tin_half(n) for n in names}
    assert tin_half("/some/where/else/val_17.jpg") == tin_half("val_17.jpg") == tin_half("val_17.JPEG")


def test_a_name_without_a_number_is_refused():
    for name in ("dog.jpg", "n01443537_0.JPEG", "val_.jpg"):
        with pytest.raises(ValueError, match="val_<number>"):
            tin_half(name)


def test_preset_serves_the_halves_as_separate_sets(tmp_path):
    make_class_tree(tmp_path / "cifar10" / "train", classes=CIFAR10_CLASSES[:2], per_class=1, ext=".jpg")
    make_class_tree(tmp_path / "cifar10" / "test", classes=CIFAR10_CLASSES[:2], per_class=1, ext=".jpg")
    make_class_tree(tmp_path / "mnist" / "test", classes=("0",), per_class=2, ext=".jpg")
    for n in (0, 1, 2, 3, 10, 15, 17):
        write_image(tmp_path / "tin" / "val" / f"val_{n}.jpg", size=(8, 8))
    bench = build_benchmark("cifar10_jpeg_tin_halves", tmp_path, default_transform(8))
    assert list(bench.ood) == ["tin_val", "tin_test", "mnist"]
    assert bench.groups == {"near": ["tin_test"], "far": ["mnist"]}  # the selection half is in no reported group
    numbers = {name: sorted(int(path.stem.split("_")[1]) for path, _ in bench.ood[name].samples)
               for name in ("tin_val", "tin_test")}
    assert numbers == {"tin_val": [0, 2, 10], "tin_test": [1, 3, 15, 17]}
    assert set(bench.ood["tin_val"].labels) == {-1} and bench.ood["tin_test"][0]["image"].shape == (3, 8, 8)
    plain = build_benchmark("cifar10_jpeg", tmp_path, default_transform(8))  # same ID sets as cifar10_jpeg
    assert plain.id_test.fingerprint() == bench.id_test.fingerprint() and len(plain.ood["tin"]) == 7
