"""Loading a checkpoint never runs code from it: every loader of the project refuses a pickle payload."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from ood_lightning.backbones import MultiLayerFeatures
from ood_lightning.classifiers import build_classifier
from ood_lightning.detectors.lfdn.checkpoint import load_official_checkpoint
from ood_lightning.detectors.lfdn.export import export


class Payload:
    """Unpickling this calls os.system: a loader that executes pickled code creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def malicious(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"weight": torch.zeros(1)}, "model": {"x": Payload(marker)}}, path)
    return path, marker


LOADERS = {
    "backbone weights": lambda p: MultiLayerFeatures("tf_efficientnet_lite0", weights=str(p)),
    "classifier weights": lambda p: build_classifier("cifar_resnet20", str(p)),
    "official LFDN checkpoint": lambda p: load_official_checkpoint(p),
    "LFDN export": lambda p: export(str(p), str(p.parent / "out")),
}


@pytest.mark.parametrize("loader", LOADERS.values(), ids=LOADERS.keys())
def test_pickle_payload_is_refused(loader, malicious):
    path, marker = malicious
    with pytest.raises(Exception) as error:
        loader(path)
    assert not marker.exists(), "the checkpoint's pickled code ran"
    assert isinstance(error.value, ValueError) and f"refusing to load {path}" in str(error.value)
