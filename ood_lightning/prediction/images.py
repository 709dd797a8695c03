"""New images to score: a folder, a list file or a glob on the command line; paths, PIL images or a tensor batch in
Python. Every image keeps its position (`index`: the order of the output rows and the DDP de-duplication key);
an unreadable file becomes a skip marker whose reason `error(index)` gives, so it gets a row and never stops a run."""
from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from ood_lightning.data.decoding import ImageDecodeError, load_rgb, to_rgb
from ood_lightning.data.sources import NO_LABEL, _image_files, skip_marker

LIST_SUFFIXES = (".txt", ".lst", ".list", ".csv")


def image_paths(spec: str | os.PathLike) -> list[Path]:
    """The images `spec` names, in a stable order: a folder (its image files, recursively, sorted by relative path),
    a list file (.txt/.lst/.list/.csv: one path per line, relative to the list's folder; blank lines and '#' lines
    ignored; a 'path label' line keeps the path), or a glob pattern (sorted). A listed file that is missing stays
    in the list: it gets a row with its error."""
    spec = os.fspath(spec)
    path = Path(spec)
    if path.is_dir():
        return sorted(_image_files(path), key=lambda p: p.relative_to(path).as_posix())
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
        entries = [line for line in lines if line and not line.startswith("#")]
        return [path.parent / _listed_path(entry) for entry in entries]
    if path.is_file():
        return [path]
    found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    if not found:
        raise FileNotFoundError(f"--images {spec}: no such folder, list file or image, and as a glob pattern it "
                                "matches no file. Give a folder of images, a .txt list of paths (one a line) or a "
                                "quoted glob such as 'photos/*.jpg'.")
    return found


def _listed_path(entry: str) -> str:
    """A list line's path: the line itself, or its first part before a trailing integer label (OpenOOD lists)."""
    parts = entry.rsplit(maxsplit=1)
    return parts[0] if len(parts) == 2 and parts[1].lstrip("-").isdigit() else entry


class ImageInputs(Dataset):
    """Images to score, as samples {"image": [3, H, W] in [0, 1], "label": NO_LABEL, "index": position}.

    `images` is a sequence of paths and/or PIL images (decoded as the benchmarks decode, then `transform`ed with the
    detector's preprocessing) or a tensor batch [B, 3, H, W] in [0, 1] (used as it is: already preprocessed).
    `names` are what the outputs call each image (paths as given; '<image N>' for in-memory images).
    """

    def __init__(self, images: Sequence[str | os.PathLike | Image.Image] | Tensor, transform):
        self.images = images
        self.transform = transform
        self.names = [f"<image {i}>" if isinstance(image, (Image.Image, Tensor)) else os.fspath(image)
                      for i, image in enumerate(images)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        image = self.images[index]
        if isinstance(image, Tensor):
            return {"image": image.float(), "label": NO_LABEL, "index": int(index)}
        try:
            pil = to_rgb(image) if isinstance(image, Image.Image) else load_rgb(image)
        except ImageDecodeError:
            return skip_marker(int(index), NO_LABEL)
        return {"image": self.transform(pil), "label": NO_LABEL, "index": int(index)}

    def error(self, index: int) -> str:
        """Why image `index` could not be scored ('' when it can be read)."""
        image = self.images[index]
        if isinstance(image, (Image.Image, Tensor)):
            return ""
        try:
            load_rgb(image)
        except ImageDecodeError as err:
            return str(err)
        return ""
