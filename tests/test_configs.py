"""Every shipped config parses against the current signatures (a renamed argument breaks here, not in a user's run)."""
from pathlib import Path

import pytest
import yaml

from ood_lightning.cli import make_cli

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_parses(path, capsys):
    with pytest.raises(SystemExit) as exit_:
        make_cli(["--config", str(path), "--print_config"], description="test")
    assert exit_.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["class_path"] == yaml.safe_load(path.read_text())["model"]["class_path"]


def test_misspelt_key_fails_with_the_key(capsys):
    with pytest.raises(SystemExit) as exit_:
        make_cli(["--config", str(CONFIGS[0]), "--data.batch_sise", "3"], description="test")
    assert exit_.value.code != 0
    assert "batch_sise" in capsys.readouterr().err
