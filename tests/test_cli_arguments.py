"""Command-line values: a `null` deep inside the model section means what it means in YAML; the model's and the
data's options may be set independently, with the logger on."""
from __future__ import annotations

import json

import yaml

from ood_lightning.cli import make_cli
from script_runs import tiny_lfdn


def test_backbone_weights_null_on_the_command_line_means_random_init(tmp_path):
    model = tiny_lfdn(tmp_path / "cache")
    model["init_args"]["backbone"]["init_args"]["weights"] = str(tmp_path / "no_such_file.pth")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": model, "trainer": {"logger": False}}))
    cli = make_cli(["--config", str(config), "--model.init_args.backbone.init_args.weights", "null"], "test")
    assert cli.model.backbone.weights_path is None
    model["init_args"]["backbone"]["init_args"]["weights"] = None  # the same in YAML
    config.write_text(json.dumps({"model": model, "trainer": {"logger": False}}))
    assert make_cli(["--config", str(config)], "test").model.backbone.weights_path is None


def test_model_seed_and_data_seed_differ_with_a_logger(tmp_path):
    """Lightning logs the model's and the datamodule's hyperparameters as one table and stops the run when they
    share a key with different values: the two seeds have different names."""
    import train

    config = {"model": tiny_lfdn(tmp_path / "cache"), "plots": False,
              "trainer": {"max_epochs": 1, "default_root_dir": str(tmp_path), "enable_progress_bar": False},
              "data": {"benchmark": "digits", "image_size": 32, "batch_size": 8, "train_subset": 16,
                       "eval_subset": 8}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    train.main(["--config", str(tmp_path / "config.json"), "--model.init_args.seed", "1", "--data.data_seed", "2"])
    run = tmp_path / "lightning_logs" / "version_0"  # the default logger's run folder
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert (hparams["seed"], hparams["data_seed"]) == (1, 2)
    assert (run / "results.json").is_file()
