"""Sources: ImageFolder layouts, OpenOOD image lists, torchvision formats, sklearn digits, seeded subsets."""
import os
import pickle
import threading

import numpy as np
import pytest
import torch

from data_helpers import make_class_tree, make_flat, write_image
from ood_lightning.data import DigitsSource, ImageFolderSource, ImageListSource, TorchvisionSource, subset
from ood_lightning.data.sources import MAX_MISSING_SHOWN


def _check_item(item, index, label, size=16):
    assert set(item) == {"image", "label", "index"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, size, size)
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["index"] == index and item["label"] == label


# --- ImageFolderSource -------------------------------------------------------------------------------------------

def test_class_layout_labels(tmp_path):
    make_class_tree(tmp_path, classes=("dog", "cat"), per_class=2)
    write_image(tmp_path / "cat" / "nested" / "deep.JPG")  # recursive, extension case-insensitive
    (tmp_path / "cat" / ".hidden.png").write_bytes(b"x")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / ".git").mkdir()
    dataset = ImageFolderSource(tmp_path, name="pets")
    assert dataset.name == "pets" and dataset.classes == ["cat", "dog"]
    assert [label for _, label in dataset.samples] == [0, 0, 0, 1, 1]
    assert [p.relative_to(tmp_path).as_posix() for p, _ in dataset.samples][:3] == [
        "cat/0.png", "cat/1.png", "cat/nested/deep.JPG"]
    for i in range(len(dataset)):
        _check_item(dataset[i], i, dataset.samples[i][1])


def test_flat_layout_is_recursive_and_unlabelled(tmp_path):
    make_flat(tmp_path, n=3)
    write_image(tmp_path / "sub" / "x.webp")
    dataset = ImageFolderSource(tmp_path)
    assert dataset.name == tmp_path.name and dataset.classes == []
    assert len(dataset) == 4 and dataset.labels == [-1] * 4


def test_ood_flag_drops_labels(tmp_path):
    dataset = ImageFolderSource(make_class_tree(tmp_path), ood=True)
    assert dataset.labels == [-1] * 6 and dataset.classes == []


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: None, lambda p: (p / "a" / "b").mkdir(parents=True)],
                         ids=["empty", "missing", "empty-subfolders"])
def test_empty_or_missing_folder_names_the_path(tmp_path, make):
    folder = tmp_path / "images"
    make(folder)
    with pytest.raises(FileNotFoundError, match=str(folder)):
        ImageFolderSource(folder)


def test_symlink_loop_does_not_hang(tmp_path):
    make_class_tree(tmp_path, per_class=1)
    os.symlink(tmp_path, tmp_path / "cat" / "loop")
    os.symlink(tmp_path / "dog", tmp_path / "dog" / "self")
    result = {}
    worker = threading.Thread(target=lambda: result.update(dataset=ImageFolderSource(tmp_path)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "scanning a folder with a symlink loop hung"
    assert len(result["dataset"]) == 2


def test_fingerprint_follows_the_files(tmp_path):
    make_class_tree(tmp_path)
    first = ImageFolderSource(tmp_path).fingerprint()
    assert ImageFolderSource(tmp_path).fingerprint() == first
    write_image(tmp_path / "cat" / "0.png", size=(20, 20))
    assert ImageFolderSource(tmp_path).fingerprint() != first


# --- ImageListSource ---------------------------------------------------------------------------------------------

def _image_list(tmp_path, lines):
    (tmp_path / "lists").mkdir(exist_ok=True)
    list_file = tmp_path / "lists" / "test_x.txt"
    list_file.write_text("\n".join(lines) + "\n")
    return list_file


def test_image_list_happy_path(tmp_path):
    write_image(tmp_path / "data" / "set" / "a.png")
    write_image(tmp_path / "data" / "set" / "with space.jpg")
    list_file = _image_list(tmp_path, ["set/a.png 3", "", "  set/with space.jpg 7  "])
    dataset = ImageListSource(list_file, tmp_path / "data")
    assert dataset.name == "test_x" and dataset.labels == [3, 7]
    _check_item(dataset[1], 1, 7)
    assert ImageListSource(list_file, tmp_path / "data", ood=True).labels == [-1, -1]


@pytest.mark.parametrize("bad", ["set/a.png", "set/a.png x"])
def test_image_list_malformed_line_names_file_and_line(tmp_path, bad):
    write_image(tmp_path / "data" / "set" / "a.png")
    list_file = _image_list(tmp_path, ["set/a.png 0", "", bad])
    with pytest.raises(ValueError, match=r"test_x\.txt, line 3"):
        ImageListSource(list_file, tmp_path / "data")


def test_image_list_reports_all_missing_files_at_once(tmp_path):
    write_image(tmp_path / "data" / "ok.png")
    names = [f"gone_{i:02d}.png" for i in range(MAX_MISSING_SHOWN + 5)]
    list_file = _image_list(tmp_path, ["ok.png 0"] + [f"{name} 1" for name in names])
    with pytest.raises(FileNotFoundError) as error:
        ImageListSource(list_file, tmp_path / "data")
    message = str(error.value)
    assert f"{len(names)} of {len(names) + 1}" in message and "and 5 more" in message
    assert all(name in message for name in names[:MAX_MISSING_SHOWN])


def test_image_list_missing_list_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        ImageListSource(tmp_path / "nope.txt", tmp_path)


# --- torchvision formats -----------------------------------------------------------------------------------------

def test_torchvision_missing_files_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*download=True"):
        TorchvisionSource("cifar10", tmp_path / "cifar10")
    with pytest.raises(FileNotFoundError, match=r"test_32x32\.mat"):
        TorchvisionSource("svhn", tmp_path / "svhn")


def test_torchvision_cifar10_native_format(tmp_path, monkeypatch):
    """Fake CIFAR-10 python batches (torchvision's md5 check patched out): pixels, labels and classes come through."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    pixels = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": pixels, "labels": [4, 9]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)
    dataset = TorchvisionSource("cifar10", tmp_path)
    assert len(dataset) == 2 and dataset.labels == [4, 9] and dataset.classes[9] == "c9"
    item = dataset[1]
    assert item["image"].shape == (3, 32, 32)
    expected = torch.from_numpy(pixels[1].reshape(3, 32, 32).astype(np.float32) / 255)
    assert torch.allclose(item["image"], expected)
    assert TorchvisionSource("cifar10", tmp_path, ood=True).labels == [-1, -1]


def test_torchvision_svhn_native_format(tmp_path, monkeypatch):
    from scipy.io import savemat
    from torchvision.datasets import SVHN

    images = np.random.default_rng(0).integers(0, 256, (32, 32, 3, 2), dtype=np.uint8)
    savemat(tmp_path / "test_32x32.mat", {"X": images, "y": np.array([[10], [3]])})
    monkeypatch.setattr(SVHN, "_check_integrity", lambda self: True)
    dataset = TorchvisionSource("svhn", tmp_path)
    assert dataset.labels == [0, 3]  # SVHN's label 10 is the digit 0
    assert torch.allclose(dataset[0]["image"], torch.from_numpy(images[..., 0].transpose(2, 0, 1) / 255).float())


# --- digits ------------------------------------------------------------------------------------------------------

def test_digits_splits_are_disjoint_and_deterministic():
    train, test = DigitsSource(range(5), "train"), DigitsSource(range(5), "test")
    everything = DigitsSource(range(5), "all")
    assert (len(train), len(test), len(everything)) == (601, 300, 901)
    assert not set(train.source_index) & set(test.source_index)
    assert set(train.source_index) | set(test.source_index) == set(everything.source_index)
    assert DigitsSource(range(5), "train").fingerprint() == train.fingerprint() != test.fingerprint()
    images = torch.stack([train[i]["image"] for i in range(20)])
    assert images.shape == (20, 3, 8, 8) and images.min() == 0 and images.max() == 1  # 0..16 -> 0..255


def test_digits_labels_and_ood():
    upper = DigitsSource(range(5, 10), "all")
    assert upper.classes == ["5", "6", "7", "8", "9"] and set(upper.labels) == {0, 1, 2, 3, 4}
    assert set(DigitsSource(range(5, 10), "all", ood=True).labels) == {-1}
    with pytest.raises(ValueError, match="split"):
        DigitsSource(range(5), "val")


# --- subset ------------------------------------------------------------------------------------------------------

def test_subset_is_seeded_sorted_and_renumbered():
    base = DigitsSource(range(10), "test")
    small = subset(base, 20, seed=1)
    assert len(small) == 20 and small.indices == sorted(small.indices)
    assert subset(base, 20, seed=1).indices == small.indices != subset(base, 20, seed=2).indices
    for i in (0, 19):
        item = small[i]
        assert item["index"] == i and item["label"] == base[small.indices[i]]["label"]
        assert torch.equal(item["image"], base[small.indices[i]]["image"])
    assert len({base.fingerprint(), small.fingerprint(), subset(base, 20, seed=2).fingerprint()}) == 3
    assert subset(base, None) is base and subset(base, len(base)) is base
    with pytest.raises(ValueError):
        subset(base, 0)


def test_subset_renumbers_skip_markers(tmp_path):
    make_flat(tmp_path, n=5)
    (tmp_path / "img_9.png").write_bytes(b"")
    base = ImageFolderSource(tmp_path)
    small = subset(base, len(base) - 1, seed=0)
    assert small.indices[-1] == 5
    assert small[len(small) - 1] == {"image": None, "label": -1, "index": len(small) - 1}
