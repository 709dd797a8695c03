"""Helpers for the data tests: tiny image files and trees written with PIL, and a seeded sample of the real images
in ../shared/data (the `real_data_root` fixture in conftest.py extracts it once per session)."""
from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# archive -> [(member prefix, how many .jpg members to extract)]
REAL_SAMPLE = {
    "cifar10.tar.gz": [("cifar10/train/", 100), ("cifar10/test/", 200)],
    "tin.tar.gz": [("tin/val/", 40)],
    "mnist.tar.gz": [("mnist/test/", 40)],
}


def noise_image(size: tuple[int, int] = (16, 16), mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A random RGB image (noise compresses badly, so JPEGs of it are long enough to cut in half)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def write_image(path: Path, size: tuple[int, int] = (16, 16), seed: int = 0) -> Path:
    """A small valid image, format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_image(size, seed=seed).save(path)
    return path


def jpeg_bytes(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    noise_image(size).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_corrupt_files(folder: Path) -> list[Path]:
    """A truncated JPEG, a zero-byte file and a text file named .jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    data = jpeg_bytes()
    truncated, empty, text = folder / "truncated.jpg", folder / "zero.jpg", folder / "text.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    empty.write_bytes(b"")
    text.write_text("this is not an image\n")
    return [truncated, empty, text]


def make_class_tree(root: Path, classes=("cat", "dog"), per_class: int = 3, size=(16, 16), ext=".png") -> Path:
    """root/<class>/<i>.png for each class."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / f"{i}{ext}", size, seed=100 * c + i)
    return root


def make_flat(root: Path, n: int = 4, size=(16, 16), ext=".png") -> Path:
    for i in range(n):
        write_image(root / f"img_{i}{ext}", size, seed=1000 + i)
    return root


def extract_sample(archive: Path, dest: Path, picks: list[tuple[str, int]], seed: int = 0) -> list[str]:
    """Extract, for each (prefix, n) of picks, a seeded random choice of n .jpg members under prefix. The archive
    is listed once and members are extracted in archive order, so the gzip stream is read forward only."""
    rng = random.Random(seed)
    with tarfile.open(archive, "r:gz") as tar:
        jpegs = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")]
        chosen = [m for prefix, n in picks for m in rng.sample([j for j in jpegs if j.name.startswith(prefix)], n)]
        chosen.sort(key=lambda m: m.offset)
        tar.extractall(dest, members=chosen, filter="data")
    return [m.name for m in chosen]
