"""Frozen-backbone features computed once per (dataset, extractor) and served in batches beside or instead of images.

A detector that reads frozen features (LFDN) declares them as `FeatureInput`s in its `BatchInputs`; the DataModule
wraps its datasets in `CachedFeatures`, so items carry the features under the input's key, and the image only when
the model also reads images. The backbone is frozen and nothing is augmented, so every training epoch and every
later evaluation share one backbone pass. A cache file is keyed by the dataset's fingerprint (files, sizes, mtimes,
subset, transform) and the extractor's identity (model, taps, neck, normalisation, weights file): change any of them
and a new file is computed.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ood_lightning.io import atomic_write, load_checkpoint

CACHE_VERSION = "1"
log = logging.getLogger(__name__)


def _digest(text: str) -> str:
    # surrogateescape: a weights path that is not UTF-8 hashes as its raw bytes (see sources._digest)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True, eq=False)
class FeatureInput:
    """Features of a frozen `extractor` (a module mapping images [B, 3, H, W] to [B, feature_dim] with an `identity()`
    string, e.g. backbones.MultiLayerFeatures), cached in `cache_dir`. Batches carry them under `key`, which names
    the extractor's identity: two detectors on one backbone share the features, two backbones never collide."""

    extractor: torch.nn.Module
    cache_dir: str

    @property
    def key(self) -> str:
        return f"features_{_digest(self.extractor.identity())[:12]}"


@dataclass(frozen=True)
class BatchInputs:
    """What a model reads from a batch: the images, and/or the features of `features`."""

    images: bool = True
    features: tuple[FeatureInput, ...] = ()

    def __or__(self, other: BatchInputs) -> BatchInputs:
        """Both models' inputs (a fusion reads what its two detectors read); features of one key once."""
        by_key = {feature.key: feature for feature in (*self.features, *other.features)}
        return BatchInputs(self.images or other.images, tuple(by_key.values()))


def cache_key(dataset: Dataset, extractor: torch.nn.Module) -> str:
    parts = [CACHE_VERSION, dataset.fingerprint(), repr(getattr(dataset, "transform", None)), extractor.identity()]
    return _digest("\n".join(parts))[:24]


@torch.no_grad()
def extract(extractor: torch.nn.Module, loader: DataLoader, device: torch.device, desc: str, quiet: bool) -> dict:
    """One backbone pass over a loader of image batches, with a progress bar in images/s.

    A set in which no image can be read gives zero feature rows and all its indices under "skipped": an OOD set
    then gets its row without metrics in the results (the DataModule refuses an empty training set)."""
    feats, index, label, skipped = [torch.empty(0, extractor.feature_dim)], [], [], []
    with tqdm(total=len(loader.dataset), desc=desc, unit="img", disable=quiet, dynamic_ncols=True) as bar:
        for batch in loader:
            skipped.append(batch["skipped"])
            index.append(batch["index"])
            label.append(batch["label"])
            if batch["index"].numel():
                feats.append(extractor(batch["image"].to(device)).float().cpu())
            bar.update(len(batch["index"]) + len(batch["skipped"]))
    return {
        "features": torch.cat(feats),
        "index": torch.cat(index),
        "label": torch.cat(label),
        "skipped": torch.cat(skipped),
    }


def cached_features(
    feature: FeatureInput,
    dataset: Dataset,
    make_loader: Callable[[Dataset], DataLoader],
    device: torch.device,
    *,
    name: str,
    builder: bool = True,
    barrier: Callable[[], None] = lambda: None,
    quiet: bool = False,
) -> dict:
    """The cache file of (`dataset`, `feature.extractor`): {"features", "index", "label", "skipped"}, computed first
    when missing. Under DDP only the `builder` (the first process of each node) computes; the others wait at the
    `barrier` and then read the file, so the cache is built once, not once per process."""
    path = Path(feature.cache_dir) / f"{cache_key(dataset, feature.extractor)}.pt"
    if builder and not path.exists():
        start = time.perf_counter()
        feature.extractor.to(device)
        data = extract(feature.extractor, make_loader(dataset), device, f"features {name}", quiet)
        data["seconds"] = time.perf_counter() - start
        atomic_write(path, lambda f: torch.save(data, f))
    barrier()
    data = load_checkpoint(path)
    if data["skipped"].numel() and not quiet:
        log.warning("%s: %d unreadable image(s) skipped (dataset indices %s)", name, data["skipped"].numel(),
                    data["skipped"][:20].tolist())
    return data


class CachedFeatures(Dataset):
    """An image dataset whose items carry cached features (one entry per `features` key), and the image only when
    `images` is given.

    Without images the items are the cached rows of the readable images (held in memory, read without worker
    processes, nothing decoded); `skipped` lists the dataset indices the cache could not read, for the evaluation
    to count. With images, every item of `images` is served with its features; an item whose features are missing
    comes back as a skip marker, which the batch collate counts.
    """

    def __init__(self, features: dict[str, dict], *, name: str, images: Dataset | None = None):
        self.name, self.images = name, images
        first = next(iter(features.values()))
        readable = set.intersection(*(set(data["index"].tolist()) for data in features.values()))
        self.index = first["index"] if len(features) == 1 else torch.tensor(sorted(readable), dtype=torch.int64)
        unreadable = {i for data in features.values() for i in data["skipped"].tolist()} - readable
        self.skipped = torch.tensor(sorted(unreadable), dtype=torch.int64)
        self.label = _aligned(first["label"], first["index"], self.index)
        self.rows = {key: _aligned(data["features"], data["index"], self.index) for key, data in features.items()}
        self.in_memory = images is None  # the DataModule reads in-memory datasets without worker processes
        if images is not None:
            self.row_of = {i: row for row, i in enumerate(self.index.tolist())}
            self.skipped = torch.zeros(0, dtype=torch.int64)  # images are served: the collate counts what is missing

    def __len__(self) -> int:
        return len(self.index) if self.images is None else len(self.images)

    def __getitem__(self, i: int) -> dict:
        if self.images is None:
            return {**{key: rows[i] for key, rows in self.rows.items()}, "label": int(self.label[i]),
                    "index": int(self.index[i])}
        item = self.images[i]
        row = self.row_of.get(int(item["index"]))
        return {**item, **{key: None if row is None else rows[row] for key, rows in self.rows.items()}}


def _aligned(values: Tensor, values_index: Tensor, index: Tensor) -> Tensor:
    """The rows of `values` (one per dataset index in `values_index`) at the dataset indices `index`, in that order."""
    if torch.equal(values_index, index):
        return values
    position = {i: row for row, i in enumerate(values_index.tolist())}
    return values[[position[i] for i in index.tolist()]]
