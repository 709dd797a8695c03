"""Backbone features computed once per (dataset, backbone, weights, resolution) and reused.

The backbone is frozen and LFDN uses no augmentation, so 150 training epochs and every later evaluation can
share one backbone pass. A cache file is keyed by the dataset's fingerprint (files, sizes, mtimes, subset,
transform) and the extractor's identity (model, taps, neck, normalisation, weights file): change any of them
and a new file is computed.
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ood_lightning.backbones import MultiLayerFeatures
from ood_lightning.io import atomic_write
from ood_lightning.io import load_checkpoint

CACHE_VERSION = "1"
log = logging.getLogger(__name__)


class FeatureDataset(Dataset):
    """Cached feature vectors with the dataset indices of the images they came from."""

    in_memory = True  # the DataModule reads it without worker processes

    def __init__(self, features: Tensor, index: Tensor, label: Tensor, skipped: Tensor, name: str):
        self.features, self.index, self.label, self.skipped, self.name = features, index, label, skipped, name

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        return {"feature": self.features[i], "label": int(self.label[i]), "index": int(self.index[i])}


def cache_key(dataset: Dataset, extractor: MultiLayerFeatures) -> str:
    parts = [CACHE_VERSION, dataset.fingerprint(), repr(getattr(dataset, "transform", None)), extractor.identity()]
    # surrogateescape: a weights path that is not UTF-8 hashes as its raw bytes (see sources._digest)
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()[:24]


@torch.no_grad()
def extract(extractor: MultiLayerFeatures, loader: DataLoader, device: torch.device, desc: str, quiet: bool) -> dict:
    """One backbone pass over a loader of image batches, with a progress bar in images/s.

    A set in which no image can be read gives zero feature rows and all its indices under "skipped": an OOD set
    then gets its row without metrics in the results (the caller refuses an empty training set)."""
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


class FeatureCache:
    """Maps image datasets to FeatureDatasets, computing each at most once per cache directory.

    Under DDP only the first process of each node computes (the others wait at a barrier and then read
    the file), so the cache is built once, not once per process.
    """

    def __init__(self, cache_dir: str | Path, extractor: MultiLayerFeatures):
        self.cache_dir = Path(cache_dir)
        self.extractor = extractor

    def path(self, dataset: Dataset) -> Path:
        return self.cache_dir / f"{cache_key(dataset, self.extractor)}.pt"

    def get(
        self,
        dataset: Dataset,
        make_loader: Callable[[Dataset], DataLoader],
        device: torch.device,
        *,
        name: str,
        builder: bool = True,
        barrier: Callable[[], None] = lambda: None,
        quiet: bool = False,
    ) -> FeatureDataset:
        if isinstance(dataset, FeatureDataset):  # already swapped in by an earlier fit/test in this process
            return dataset
        path = self.path(dataset)
        if builder and not path.exists():
            start = time.perf_counter()
            self.extractor.to(device)
            data = extract(self.extractor, make_loader(dataset), device, f"features {name}", quiet)
            data["seconds"] = time.perf_counter() - start
            atomic_write(path, lambda f: torch.save(data, f))
        barrier()
        data = load_checkpoint(path)
        if data["skipped"].numel() and not quiet:
            log.warning("%s: %d unreadable image(s) skipped (dataset indices %s)", name, data["skipped"].numel(),
                        data["skipped"][:20].tolist())
        return FeatureDataset(data["features"], data["index"], data["label"], data["skipped"], name)
