"""Loading a checkpoint never runs code from it: every loader of the project refuses a pickle payload, whether the
file is a weight file, a --ckpt_path on disk or behind a URL; a score file holding Python objects is refused too."""
from __future__ import annotations

import functools
import http.server
import importlib
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from evaluate import main as evaluate_main
from ood_lightning.backbones import MultiLayerFeatures
from ood_lightning.cli import make_cli
from ood_lightning.classifiers import build_classifier
from ood_lightning.detectors.lfdn.checkpoint import load_official_checkpoint
from ood_lightning.detectors.lfdn.export import export
from ood_lightning.io import UnsafeCheckpointError
from script_runs import tiny_lfdn


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


@pytest.fixture
def served(tmp_path):
    """A web server on the loopback address serving tmp_path; yields its base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def _tiny_lfdn_config(root: Path) -> Path:
    config = {"seed_everything": 0,
              "trainer": {"max_epochs": 1, "accelerator": "cpu", "default_root_dir": str(root), "logger": False,
                          "enable_progress_bar": False, "enable_model_summary": False},
              "model": tiny_lfdn(root / "cache"),
              "data": {"benchmark": "digits", "image_size": 32, "batch_size": 16, "train_subset": 16,
                       "eval_subset": 4}}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("entry_point", ["train", "evaluate"])
def test_a_checkpoint_given_as_url_is_refused_without_running_its_code(entry_point, tmp_path, served, malicious):
    """Lightning's own reader unpickles a URL with weights_only=False; every --ckpt_path goes through ours."""
    path, marker = malicious
    main = importlib.import_module(entry_point).main
    url = f"{served}/{path.name}"
    with pytest.raises(UnsafeCheckpointError) as error:
        main(["--config", str(_tiny_lfdn_config(tmp_path)), "--ckpt_path", url])
    assert not marker.exists(), "the checkpoint's pickled code ran"
    assert f"refusing to load {url}" in str(error.value)
    assert "weights_only" not in str(error.value)  # not torch's advice to switch the protection off


def test_a_refused_backbone_weight_file_is_the_error_the_cli_raises(tmp_path, malicious):
    """The constructor's refusal, not jsonargparse's report of every union subtype with the whole config in it."""
    path, marker = malicious
    args = ["--config", str(_tiny_lfdn_config(tmp_path)),
            "--model.init_args.backbone.init_args.weights", str(path)]
    with pytest.raises(UnsafeCheckpointError) as error:
        make_cli(args, description="test")
    assert not marker.exists()
    message = str(error.value)
    assert message.startswith(f"refusing to load {path}") and "Union" not in message and "Namespace(" not in message


def test_a_score_file_holding_python_objects_is_refused_by_name(tmp_path):
    scores = tmp_path / "scores"
    scores.mkdir()
    np.savez(scores / "id.npz", index=np.arange(2), score_mse=np.array([0.1, "x"], dtype=object))
    with pytest.raises(ValueError, match=f"refusing to read {re.escape(str(scores / 'id.npz'))}: .*Python objects"):
        evaluate_main(["--from_scores", str(tmp_path)])
