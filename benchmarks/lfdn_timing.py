"""Timing that can be trusted on a shared CPU: every measured path is run once untimed (first forward at a shape,
cold files, lazy allocations), the paths are then timed in turn, round after round, so a slow spell of the machine
hits all of them alike, and each reports the median of its rounds. Used by the LFDN speed benchmarks."""
from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Iterator
from itertools import islice

import torch
from torch.utils.data import DataLoader

from ood_lightning.backbones import group_zscore
from ood_lightning.detectors.lfdn import LFDNDetector


def alternate(paths: dict[str, Callable[[], None]], rounds: int) -> dict[str, float]:
    """Seconds per call of each path: one untimed warm-up call each, then `rounds` rounds timing every path once
    in turn; the median of each path's rounds."""
    for run in paths.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, run in paths.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds) for name, seconds in times.items()}


def batches(loader: DataLoader, count: int) -> Iterator[dict]:
    """The first `count` batches of a fresh pass over `loader` (files decoded again every pass)."""
    return islice(iter(loader), count)


class TrainingSteps:
    """LFDN training steps (AdamW on a copy of the network, so the caller's weights stay as they are), either from
    features already computed (what the feature cache serves) or from images through the backbone (no cache)."""

    def __init__(self, model: LFDNDetector, lr: float = 1e-4):
        self.model = model
        self.net = copy.deepcopy(model.net)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=lr)

    def step(self, features: torch.Tensor, index: torch.Tensor) -> None:
        z = group_zscore(features, self.model.group_sizes)
        t, noise = self.model.training_noise(index, z)
        loss = self.model.schedule.training_loss(self.net, z, t, noise)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def from_features(self, feature_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for features, index in feature_batches:
            self.step(features, index)

    def from_images(self, loader: DataLoader, count: int) -> None:
        for batch in batches(loader, count):
            self.step(self.model.backbone(batch["image"]), batch["index"])
