"""Runs end to end over sets that broke them after all the work was done: file names that are not UTF-8. LFDN
through train.py (features, training, scoring, results files; a tiny LFDN on a random-init EfficientNet-Lite0 at
32 px, one epoch), in this process."""
from __future__ import annotations

import json
import os
from pathlib import Path

from data_helpers import jpeg_bytes, make_class_tree, write_image
from script_runs import tiny_lfdn
from ood_lightning.data.sources import ImageFolderSource

LATIN1_NAME = b"caf\xe9"  # "café" in Latin-1: not UTF-8, so Python holds it as "caf\udce9"


def _latin1_path(folder: Path, name: bytes) -> Path:
    """folder/<name> with raw bytes, as Python names it (os.fsdecode: undecodable bytes become surrogates)."""
    return Path(os.fsdecode(os.path.join(os.fsencode(folder), name)))


def _train(tmp_path: Path, ood: dict[str, Path], id_train: Path | None = None) -> dict:
    """train.py on a folders benchmark (ID: two classes of three images); returns results.json."""
    import train

    id_test = make_class_tree(tmp_path / "id_test", per_class=3)
    id_train = id_train or make_class_tree(tmp_path / "id_train", per_class=3)
    out = tmp_path / "results"
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_epochs": 1, "default_root_dir": str(tmp_path / "runs"),
                    "logger": False, "enable_progress_bar": False, "enable_model_summary": False},
        "model": tiny_lfdn(tmp_path / "cache", results_dir=out),
        "data": {"benchmark": "folders", "id_train": str(id_train), "id_test": str(id_test),
                 "ood": {name: str(folder) for name, folder in ood.items()}, "image_size": 32, "batch_size": 4},
        "plots": True,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    train.main(["--config", str(tmp_path / "config.json")])
    return json.loads((out / "results.json").read_text())


def test_file_names_that_are_not_utf8_are_fingerprinted_as_their_bytes(tmp_path):
    folder = tmp_path / "ood"
    write_image(folder / "plain.png")
    write_image(_latin1_path(folder, LATIN1_NAME + b".png"), seed=1)
    source = ImageFolderSource(folder, ood=True)
    before = source.fingerprint()
    os.rename(_latin1_path(folder, LATIN1_NAME + b".png"), _latin1_path(folder, b"cafe.png"))
    assert ImageFolderSource(folder, ood=True).fingerprint() != before  # the name is part of the fingerprint


def test_lfdn_run_with_file_names_that_are_not_utf8(tmp_path):
    """An OOD folder holding a readable and an unreadable Latin-1 file: scored, counted, results written."""
    folder = tmp_path / "latin"
    write_image(_latin1_path(folder, LATIN1_NAME + b".png"), seed=1)
    write_image(folder / "plain.png", seed=2)
    _latin1_path(folder, LATIN1_NAME + b"_truncated.jpg").write_bytes(jpeg_bytes()[:300])
    results = _train(tmp_path, {"latin": folder})
    row = results["scores"]["mse"]["latin"]
    assert (row["n_ood"], row["n_skipped"]) == (2, 1) and row["auroc"] is not None
    assert (tmp_path / "results" / "scores" / "latin.npz").is_file()
