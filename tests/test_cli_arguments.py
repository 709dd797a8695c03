"""Command-line values that must mean what they mean in YAML: a `null` deep inside the model section."""
from __future__ import annotations

import json

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
