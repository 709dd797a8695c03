"""Datasets that turn images on disk or in memory into samples.

A sample is a dict `{"image": FloatTensor[3,H,W] in [0,1], "label": int, "index": int}`: `label` is the class
index, or `NO_LABEL` (-1) when unknown or out-of-distribution; `index` is the sample's position in its dataset
(0..len-1), which is how scores are de-duplicated and matched across processes. Normalisation is left to the model.

An image that cannot be decoded comes back as a *skip marker*: the same dict with `"image": None`. The batch
collate drops it and reports its index under `"skipped"`, so a corrupt file never crashes an epoch and never
disappears silently. The failure is also logged once per file (per process).

Every dataset here has `.name`, `.transform`, `.classes` (class names; empty when labels are NO_LABEL) and
`.fingerprint()`, a short hash that changes when the data changes (file-based sets: relative paths, sizes,
mtimes and labels; in-memory sets: the pixel and label bytes), used to invalidate feature caches.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets
from torchvision import transforms as T

from .decoding import ImageDecodeError, load_rgb

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
MAX_MISSING_SHOWN = 20
NO_LABEL = -1  # the label of a sample whose class is unknown or that is out-of-distribution

Transform = Callable[[Image.Image], object]


def skip_marker(index: int, label: int) -> dict:
    """The sample that stands for an undecodable image: it keeps the index so collate can report it."""
    return {"image": None, "label": label, "index": index}


def _digest(parts: Iterable[bytes | str]) -> str:
    """A short hash of the parts. Text is hashed as the bytes it came from: a file name that is not UTF-8 (Python
    holds its undecodable bytes as surrogates, e.g. b'caf\\xe9.png' as 'caf\\udce9.png') hashes as its raw bytes."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part)
        hasher.update(b"\0")
    return hasher.hexdigest()[:16]


class ImageSource(Dataset):
    """Base class: subclasses fill `self.labels` (one int per sample) and implement `_image(i)` (an RGB PIL image)
    and `_fingerprint_parts()`."""

    labels: list[int]

    def __init__(self, name: str, transform: Transform | None, classes: Sequence[str] = ()):
        self.name = name
        self.transform = transform if transform is not None else T.ToTensor()
        self.classes = list(classes)
        self._reported: set[int] = set()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range 0..{len(self) - 1}")
        label = self.labels[index]
        try:
            image = self._image(index)
        except ImageDecodeError as err:
            if index not in self._reported:
                self._reported.add(index)
                log.warning("%s: skipping sample %d: %s", self.name, index, err)
            return skip_marker(index, label)
        return {"image": self.transform(image), "label": label, "index": index}

    def _image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def _fingerprint_parts(self) -> Iterator[bytes | str]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        return _digest([type(self).__name__, *self._fingerprint_parts()])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, n={len(self)})"


class FileSource(ImageSource):
    """Images stored as files: `samples` holds (path, label) pairs; paths are decoded on access."""

    def __init__(self, root: Path, samples: list[tuple[Path, int]], name: str, transform: Transform | None,
                 classes: Sequence[str] = ()):
        super().__init__(name, transform, classes)
        self.root = root
        self.samples = samples
        self.labels = [label for _, label in samples]

    def _image(self, index: int) -> Image.Image:
        return load_rgb(self.samples[index][0])

    def _fingerprint_parts(self) -> Iterator[str]:
        for path, label in self.samples:
            try:
                stat = path.stat()
                state = f"{stat.st_size}:{stat.st_mtime_ns}"
            except OSError:
                state = "missing"
            yield f"{Path(os.path.relpath(path, self.root)).as_posix()}:{state}:{label}"


def _is_image_file(entry: os.DirEntry) -> bool:
    """A file named as an image. A link named so that leads nowhere (dangling, or a loop) counts too: reading it
    fails, so it becomes a counted skip instead of silently shrinking the set."""
    if entry.name.startswith(".") or os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
        return False
    return _is_broken_link(entry) or entry.is_file()


def _is_dir(entry: os.DirEntry) -> bool:
    return not _is_broken_link(entry) and entry.is_dir()


def _is_broken_link(entry: os.DirEntry) -> bool:
    """A symlink whose target cannot be reached; `DirEntry.is_file/is_dir` raise OSError on a link loop."""
    return entry.is_symlink() and not os.path.exists(entry.path)


def _image_files(folder: Path, seen: set[tuple[int, int]] | None = None) -> list[Path]:
    """Image files under `folder`, recursively; directory symlinks are followed, but each directory only once,
    so a symlink loop cannot hang the scan. Hidden files and folders are skipped."""
    seen = set() if seen is None else seen
    stat = folder.stat()
    if (stat.st_dev, stat.st_ino) in seen:
        return []
    seen.add((stat.st_dev, stat.st_ino))
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if _is_dir(entry):
                found += _image_files(Path(entry.path), seen)
            elif _is_image_file(entry):
                found.append(Path(entry.path))
    return found


class ImageFolderSource(FileSource):
    """A folder of images, in either of two layouts, detected automatically:
    - class layout: only subfolders at the top; labels are the sorted subfolder index (as torchvision's ImageFolder);
    - flat layout: image files at the top (subfolders are scanned too); labels are NO_LABEL.
    `ood=True` sets every label to NO_LABEL whatever the layout. Order: by class, then by relative path.

    Raises FileNotFoundError naming the folder when it is missing or holds no image files.
    """

    def __init__(self, root: str | os.PathLike, transform: Transform | None = None, name: str | None = None,
                 ood: bool = False):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        with os.scandir(root) as entries:
            top = [e for e in entries if not e.name.startswith(".")]
        flat = any(_is_image_file(e) for e in top)
        classes = [] if flat else sorted(e.name for e in top if _is_dir(e))
        seen = set() if flat else {(root.stat().st_dev, root.stat().st_ino)}  # a link back to root is no class
        samples = []
        for label, folder in ([(NO_LABEL, root)] if flat else enumerate(root / c for c in classes)):
            files = sorted(_image_files(folder, seen), key=lambda p: p.relative_to(root).as_posix())
            samples += [(path, NO_LABEL if ood else label) for path in files]
        if not samples:
            raise FileNotFoundError(
                f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in folder {root}")
        super().__init__(root, samples, name or root.name, transform, [] if ood else classes)


class ImageListSource(FileSource):
    """An OpenOOD image list: one `relative/path label` per line (UTF-8), paths relative to `data_root`.

    Blank lines are ignored; the label is the last field, an integer, so paths may contain spaces. `ood=True` sets
    every label to NO_LABEL. A malformed line (or bytes that are not UTF-8) raises ValueError naming the file and line;
    listed files that do not exist raise one FileNotFoundError that names the first ones, with their lines, and
    gives the count.
    """

    def __init__(self, list_file: str | os.PathLike, data_root: str | os.PathLike,
                 transform: Transform | None = None, name: str | None = None, ood: bool = False):
        list_file, data_root = Path(list_file), Path(data_root)
        if not list_file.is_file():
            raise FileNotFoundError(f"image list not found: {list_file}")
        samples, lines = [], []
        for number, line in enumerate(_read_utf8(list_file).splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.strip().rsplit(maxsplit=1)
            if len(fields) != 2 or not re.fullmatch(r"-?[0-9]+", fields[1]):
                raise ValueError(f"{list_file}, line {number}: expected 'relative/path label', got {line!r}")
            samples.append((data_root / fields[0], NO_LABEL if ood else int(fields[1])))
            lines.append(number)
        if not samples:
            raise ValueError(f"image list {list_file} lists no images")
        missing = [(number, path) for number, (path, _) in zip(lines, samples) if not path.is_file()]
        if missing:
            shown = "\n".join(f"  - line {number}: {path}" for number, path in missing[:MAX_MISSING_SHOWN])
            more = f"\n  ... and {len(missing) - MAX_MISSING_SHOWN} more" if len(missing) > MAX_MISSING_SHOWN else ""
            raise FileNotFoundError(
                f"{len(missing)} of {len(samples)} images listed in {list_file} are missing under {data_root}:\n"
                f"{shown}{more}")
        super().__init__(data_root, samples, name or list_file.stem, transform)


def _read_utf8(path: Path) -> str:
    """The text of a list file; bytes that are not UTF-8 (a binary file given as a list) name the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # a byte-order mark (Windows editors) is not part of the first path
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text ({err.reason} at byte {err.start}); an image list "
                         "holds 'relative/path label' lines") from err


class TorchvisionSource(ImageSource):
    """CIFAR-10, CIFAR-100 or SVHN in torchvision's native format under `root`.

    Expected files: `root/cifar-10-batches-py/`, `root/cifar-100-python/`, `root/<split>_32x32.mat` (SVHN).
    Nothing is downloaded unless `download=True`. `split` is "train"/"test" (SVHN also "extra").
    """

    KINDS = {"cifar10": tv_datasets.CIFAR10, "cifar100": tv_datasets.CIFAR100, "svhn": tv_datasets.SVHN}

    def __init__(self, kind: str, root: str | os.PathLike, split: str = "test", transform: Transform | None = None,
                 download: bool = False, name: str | None = None, ood: bool = False):
        if kind not in self.KINDS:
            raise ValueError(f"unknown torchvision dataset {kind!r}; choose one of {sorted(self.KINDS)}")
        root = Path(root)
        expected = self.expected_path(kind, root, split)
        if not download and not expected.exists():
            raise FileNotFoundError(
                f"{kind} ({split}) not found: expected {expected}. Place torchvision's {kind} files there "
                f"or pass download=True to download them")
        if kind == "svhn":
            dataset = tv_datasets.SVHN(str(root), split=split, download=download)
            self._pixels = dataset.data.transpose(0, 2, 3, 1)  # SVHN stores N x C x H x W
            labels = dataset.labels
        else:
            dataset = self.KINDS[kind](str(root), train=split == "train", download=download)
            self._pixels, labels = dataset.data, dataset.targets
        super().__init__(name or kind, transform, [] if ood else getattr(dataset, "classes", []))
        self.labels = [NO_LABEL if ood else int(label) for label in labels]
        self._identity = f"{kind}/{split}"

    @staticmethod
    def expected_path(kind: str, root: str | os.PathLike, split: str = "test") -> Path:
        """The file or folder torchvision needs for (kind, split) under root."""
        names = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "svhn": f"{split}_32x32.mat"}
        return Path(root) / names[kind]

    def _image(self, index: int) -> Image.Image:
        return Image.fromarray(self._pixels[index])

    def _fingerprint_parts(self) -> Iterator[bytes | str]:
        yield self._identity
        yield np.ascontiguousarray(self._pixels).tobytes()
        yield np.asarray(self.labels, dtype=np.int64).tobytes()


class DigitsSource(ImageSource):
    """scikit-learn's bundled 8x8 digits (offline): grey 0..16 scaled to uint8, served as RGB.

    `digits` selects the classes; labels are the position of a sample's digit in sorted(digits) (so digits 5-9
    become labels 0-4), or NO_LABEL with `ood=True`. `split` is "train" (2/3), "test" (1/3) or "all", from one fixed
    stratified split (seed 0), so train and test never overlap whatever digits are chosen.
    """

    def __init__(self, digits: Iterable[int] = range(10), split: str = "all", transform: Transform | None = None,
                 name: str | None = None, ood: bool = False):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in ("train", "test", "all"):
            raise ValueError(f"digits split must be 'train', 'test' or 'all', got {split!r}")
        digits = sorted(set(digits))
        data = load_digits()
        everything = np.arange(len(data.target))
        train, test = train_test_split(everything, test_size=1 / 3, stratify=data.target, random_state=0)
        chosen = {"train": train, "test": test, "all": everything}[split]
        keep = np.sort(chosen[np.isin(data.target[chosen], digits)])
        if not len(keep):
            raise ValueError(f"no digits {digits} in split {split!r}")
        position = {digit: i for i, digit in enumerate(digits)}
        super().__init__(name or f"digits_{split}", transform, [] if ood else [str(d) for d in digits])
        self.source_index = keep  # positions in sklearn's load_digits()
        self._pixels = np.rint(data.images[keep] * (255 / 16)).astype(np.uint8)
        self.labels = [NO_LABEL if ood else position[int(t)] for t in data.target[keep]]

    def _image(self, index: int) -> Image.Image:
        return Image.fromarray(self._pixels[index]).convert("RGB")

    def _fingerprint_parts(self) -> Iterator[bytes]:
        yield self._pixels.tobytes()
        yield np.asarray(self.labels, dtype=np.int64).tobytes()


class SubsetSource(Dataset):
    """A fixed selection of another dataset's samples, renumbered: item i is base item `indices[i]` with
    `"index": i`, so indices stay 0..len-1 (the original position is `indices[i]`)."""

    def __init__(self, base: Dataset, indices: Sequence[int]):
        self.base = base
        self.indices = [int(i) for i in indices]
        self.name = base.name
        self.classes = getattr(base, "classes", [])

    @property
    def transform(self):
        return getattr(self.base, "transform", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return {**self.base[self.indices[index]], "index": int(index)}

    def fingerprint(self) -> str:
        return _digest(["subset", self.base.fingerprint(), np.asarray(self.indices, dtype=np.int64).tobytes()])

    def __repr__(self) -> str:
        return f"SubsetSource(name={self.name!r}, n={len(self)} of {len(self.base)})"


def subset(dataset: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """A seeded random sample of n items in their original order (indices renumbered 0..n-1, see SubsetSource);
    the dataset itself when n is None or not smaller than it."""
    if n is None or n >= len(dataset):
        return dataset
    if n < 1:
        raise ValueError(f"subset size must be at least 1, got {n}")
    chosen = np.random.default_rng(seed).choice(len(dataset), size=n, replace=False)
    return SubsetSource(dataset, np.sort(chosen))


def sample_path(dataset: Dataset, index: int) -> str:
    """Where sample `index` of `dataset` comes from: its file (through any subsets), or '<name>#<position>' for a
    set held in memory (torchvision formats, digits)."""
    while isinstance(dataset, SubsetSource):
        dataset, index = dataset.base, dataset.indices[index]
    if isinstance(dataset, FileSource):
        return os.fspath(dataset.samples[index][0])
    return f"{getattr(dataset, 'name', 'set')}#{index}"
