"""Runs end to end over sets that broke them after all the work was done: file names that are not UTF-8, and an
OOD set in which no image can be read. LFDN through train.py (features, training, scoring, results files; a tiny
LFDN on a random-init EfficientNet-Lite0 at 32 px, one epoch), DiffGuard through evaluate.py (a tiny random UNet at
16 px), each in this process."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from data_helpers import jpeg_bytes, make_class_tree, write_corrupt_files, write_image
from diffguard_helpers import evaluate_args, run_evaluate, save_tiny_unet
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
        "model": tiny_lfdn(tmp_path / "cache"),
        "results_dir": str(out),
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


def test_ood_set_with_no_readable_image_gets_an_na_row(tmp_path):
    """The other sets are scored; the unreadable one is a row without metrics that counts its skips."""
    write_image(tmp_path / "good" / "a.png", seed=3)
    write_image(tmp_path / "good" / "b.png", seed=4)
    write_corrupt_files(tmp_path / "allbad")
    results = _train(tmp_path, {"good": tmp_path / "good", "allbad": tmp_path / "allbad"})
    assert results["n_skipped"] == {"id": 0, "good": 0, "allbad": 3}
    for score, sets in results["scores"].items():
        assert sets["good"]["auroc"] is not None, score
        assert sets["allbad"]["auroc"] is None and sets["allbad"]["n_ood"] == 0 and sets["allbad"]["n_skipped"] == 3
    assert "| mse | allbad | n/a |" in (tmp_path / "results" / "results.md").read_text()
    assert (tmp_path / "results" / "plots" / "hist_mse.png").is_file()  # the good set's plots are drawn


def test_training_set_with_no_readable_image_is_a_clear_error(tmp_path):
    write_image(tmp_path / "good" / "a.png", seed=3)
    with pytest.raises(RuntimeError, match=r"train: no image could be read \(3 unreadable\)"):
        _train(tmp_path, {"good": tmp_path / "good"}, id_train=write_corrupt_files(tmp_path / "bad_train")[0].parent)


def test_diffguard_run_with_an_ood_set_of_unreadable_files(tmp_path):
    """DiffGuard reads images through the shared test_step: the unreadable set gets its row without metrics."""
    make_class_tree(tmp_path / "id", per_class=2)
    write_image(tmp_path / "good" / "a.png", seed=3)
    write_corrupt_files(tmp_path / "allbad")
    out = tmp_path / "results"
    init = {"diffusion_model": str(save_tiny_unet(tmp_path / "unet")), "classifier": "cifar_resnet20",
            "classifier_weights": None, "num_classes": 10, "num_steps": 4, "max_inversion_steps": 2,
            "stop_psnr": 14.0, "stop_dists_similarity": None, "cutouts": 1, "cutout_size": 12,
            "similarities": "[l2]", "grid_images": 0}
    args = evaluate_args("ood_lightning.detectors.diffguard.gdm.DiffGuardGDM", init, out, 4, 10)
    run_evaluate(args + ["--results_dir", str(out), "--data.benchmark", "folders", "--data.root", str(tmp_path),
                         "--data.id_test", "id", "--data.ood", "{good: good, allbad: allbad}"])
    results = json.loads((out / "results.json").read_text())
    assert results["n_skipped"] == {"id": 0, "good": 0, "allbad": 3}
    assert results["scores"]["l2"]["good"]["auroc"] is not None
    row = results["scores"]["l2"]["allbad"]
    assert (row["auroc"], row["n_ood"], row["n_skipped"]) == (None, 0, 3)
