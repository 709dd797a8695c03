"""What the command line says to a person: a short --help that names the detectors and configs, the full help a flag
away, argument errors as one line per problem (every problem, with a suggestion), not a usage dump, and a checkpoint
of another model config explained by the options that differ."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ood_lightning.cli import CheckpointMismatchError, make_cli
from ood_lightning.detectors.base import OODDetector
from script_runs import REPO, script_env, tiny_lfdn

DEMO = str(REPO / "configs" / "lfdn" / "digits_demo.yaml")


def _exit(args: list[str], capsys, model_class=None) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        make_cli(args, description="Test entry point.", **({"model_class": model_class} if model_class else {}))
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_help_is_short_and_names_every_detector_and_config_folder(capsys):
    code, out, _ = _exit(["--help"], capsys)
    assert code == 0 and len(out.splitlines()) < 60
    for name in ("LFDNDetector", "ClassifierBaselines", "DiffGuardGDM", "DiffGuardLDM", "CascadeFusion",
                 "ClassConditionalDiffusion", "ClassifierTraining"):
        assert f"  {name} " in out, name
    for folder in sorted(p.name for p in (REPO / "configs").iterdir() if p.is_dir()):
        assert f"configs/{folder}/" in out, folder
    assert "--help-all" in out and "--trainer.max_epochs" not in out


def test_help_all_is_the_full_help_and_model_help_takes_a_short_name(capsys):
    code, out, _ = _exit(["--help-all"], capsys, model_class=OODDetector)
    assert code == 0 and "--trainer.max_epochs" in out and "--data.benchmark" in out
    code, out, _ = _exit(["--model.help", "LFDNDetector"], capsys)
    assert code == 0 and "--model.num_blocks" in out


def test_every_misspelt_option_on_the_command_line_is_named_with_a_suggestion(capsys):
    code, _, err = _exit(["--config", DEMO, "--model.init_args.num_blockz", "3", "--data.batch_sise", "3",
                          "--trainer.max_epochz", "2"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 5 and "usage:" not in err
    assert "  --model.init_args.num_blockz: LFDNDetector has no option 'num_blockz' (did you mean 'num_blocks'?)" \
        in lines
    assert "  --data.batch_sise: no such option (did you mean --data.batch_size?)" in lines
    assert "  --trainer.max_epochz: no such option (did you mean --trainer.max_epochs?)" in lines


def test_a_misspelt_key_in_a_config_file_is_named(tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text(Path(DEMO).read_text().replace("num_blocks: 6", "num_blockz: 6"))
    code, _, err = _exit(["--config", str(config)], capsys)
    assert code == 2 and "  config: LFDNDetector has no option 'num_blockz' (did you mean 'num_blocks'?)" in err
    assert "Union subtypes" not in err and "Given value" not in err


@pytest.mark.parametrize("value", ["{tin:/data/tin}", "tin=/data/tin", "/data/tin"])
def test_a_mapping_in_the_wrong_syntax_gets_an_example(value, capsys):
    code, _, err = _exit(["--data.benchmark", "folders", "--data.ood", value], capsys)
    assert code == 2 and "--data.ood '{tin: /data/tin, mnist: /data/mnist}'" in err and "--data.ood.tin" in err
    assert "Union subtypes" not in err


def test_no_optimizer_switch_that_would_silently_replace_the_models_own(capsys):
    code, _, err = _exit(["--config", DEMO, "--optimizer", "SGD"], capsys)
    assert code == 2 and "--optimizer: no such option" in err


def test_a_checkpoint_of_another_model_config_names_what_differs_and_its_config(tmp_path):
    """Not torch's list of missing and mis-shaped keys: the options that differ and the config to use instead."""
    from evaluate import main as evaluate
    from train import main as train

    config = {"seed_everything": 0,
              "trainer": {"max_epochs": 1, "accelerator": "cpu", "default_root_dir": str(tmp_path),
                          "enable_progress_bar": False, "enable_model_summary": False},
              "model": tiny_lfdn(tmp_path / "cache"),
              "data": {"benchmark": "digits", "image_size": 32, "batch_size": 16, "train_subset": 16,
                       "eval_subset": 4}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    train(["--config", str(tmp_path / "config.yaml")])
    run = tmp_path / "lightning_logs" / "version_0"
    with pytest.raises(CheckpointMismatchError) as error:
        evaluate(["--config", str(tmp_path / "config.yaml"), "--model.init_args.hidden_dim", "48",
                  "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    message = str(error.value)
    assert "hidden_dim (checkpoint: 32, this config: 48)" in message
    assert f"use --config {run / 'config.yaml'}" in message and "num_blocks" not in message
    assert message.endswith("(torch found: size mismatch.)") and "copying a param" not in message


def test_a_missing_file_is_one_line_without_a_traceback(tmp_path):
    """The file and where to look, as the last thing a user sees, not 86 lines of jsonargparse's traceback."""
    missing = tmp_path / "efficientnet-lite0.pth"
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--config", DEMO,
                             "--model.init_args.backbone.init_args.weights", str(missing)],
                            cwd=tmp_path, env=script_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-3:] == [
        "train.py: error: 1 file(s) this config names are missing:",
        f"  --model.init_args.backbone.init_args.weights: {missing} does not exist",
        "checkpoints/README.md says what each file is and where to get it; nothing is downloaded."]
    assert not (tmp_path / "runs").exists()


def test_every_missing_file_of_a_config_is_reported_at_once_before_any_work(tmp_path, monkeypatch):
    """DiffGuard's released ImageNet config names four files; a user without them learns of all four in one run."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        make_cli(["--config", str(REPO / "configs" / "diffguard" / "imagenet_gdm.yaml")], "t", OODDetector)
    lines = str(error.value).splitlines()
    assert lines[0] == "4 file(s) this config names are missing:"
    assert lines[1:5] == ["  --model.init_args.diffusion_model: checkpoints/256x256_diffusion_uncond.pt does not exist",
                          "  --model.init_args.classifier_weights: checkpoints/resnet50-19c8e357.pth does not exist",
                          "  --model.init_args.vgg16_weights: checkpoints/vgg16-397923af.pth does not exist",
                          "  --model.init_args.dists_weights: checkpoints/dists_weights.pt does not exist"]
    assert "checkpoints/README.md" in lines[5]


def test_missing_official_checkpoints_and_ckpt_path_are_reported_together(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        make_cli(["--config", DEMO, "--model.init_args.official_checkpoints", "[c0.pth, last.pth]",
                  "--ckpt_path", "runs/x.ckpt"], "t", OODDetector)
    assert str(error.value).splitlines()[1:4] == ["  --model.init_args.official_checkpoints: c0.pth does not exist",
                                                   "  --model.init_args.official_checkpoints: last.pth does not exist",
                                                   "  --ckpt_path: runs/x.ckpt does not exist"]


def test_options_without_a_model_say_how_to_give_one(capsys):
    code, _, err = _exit(["--data.batch_size", "3"], capsys)
    assert code == 2 and "no model: give a config (--config FILE; --help lists them) or --model CLASS" in err
