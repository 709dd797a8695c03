"""Every file of a run in its run folder, whichever logger (issue 15): W&B left at its save_dir default writes under
default_root_dir, LightningCLI's config.yaml goes beside the checkpoints, and a run that fails before writing anything
else leaves no folder behind. Lightning's BoringModel keeps these runs to a few steps."""
import json

import lightning as L
import pytest
from jsonargparse import ArgumentParser
from lightning.pytorch.demos.boring_classes import BoringDataModule, BoringModel
from lightning.pytorch.loggers import CSVLogger
from script_runs import tiny_lfdn
from test_wandb import wandb_env  # noqa: F401 (fixture)

from ood_lightning.run_folder import RunConfigCallback, remove_unused_run_folder, run_folder


def config_callback() -> RunConfigCallback:
    parser = ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.1)
    return RunConfigCallback(parser, parser.parse_args([]), overwrite=True)


def trainer(root, logger=True, **kwargs) -> L.Trainer:
    return L.Trainer(default_root_dir=str(root), logger=logger, callbacks=[config_callback()], accelerator="cpu",
                     max_steps=2, limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False, **kwargs)


def files_under(folder) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("save_dir", [None, "elsewhere"])
def test_a_wandb_logger_without_save_dir_gets_default_root_dir(save_dir, wandb_env, tmp_path):
    """WandbLogger's own default is the current directory; an explicit save_dir is kept."""
    from ood_lightning.cli import make_cli

    init = {"project": "p", "offline": True, **({"save_dir": str(tmp_path / save_dir)} if save_dir else {})}
    (tmp_path / "config.json").write_text(json.dumps(tiny_config(tmp_path)))
    cli = make_cli(["--config", str(tmp_path / "config.json"), "--trainer.logger",
                    json.dumps({"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": init})], "t")
    assert cli.trainer.loggers[0].save_dir == (str(tmp_path / save_dir) if save_dir else "runs/tiny")


class FailingSetup(BoringDataModule):
    def setup(self, stage):
        raise FileNotFoundError("no data folder")


def test_run_failing_in_setup_leaves_no_folder(tmp_path):
    """Issue 15: 6 of 16 failed runs left an empty or config-only version_N (the loggers create it before the data
    are read). Now the folders the run made under default_root_dir go; the root and the runs before it stay."""
    (tmp_path / "lightning_logs" / "version_0" / "checkpoints").mkdir(parents=True)  # an earlier run
    (tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    with pytest.raises(FileNotFoundError, match="no data folder"):
        trainer(tmp_path).fit(BoringModel(), datamodule=FailingSetup())
    assert files_under(tmp_path) == ["lightning_logs/version_0/checkpoints/last.ckpt"]
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]

    fresh = tmp_path / "fresh"
    with pytest.raises(FileNotFoundError, match="no data folder"):
        trainer(fresh).fit(BoringModel(), datamodule=FailingSetup())
    assert list(fresh.iterdir()) == []


def test_run_failing_on_its_checkpoint_leaves_no_config_only_folder(tmp_path):
    """A refused --ckpt_path fails after config.yaml is written: that folder went too."""
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    t = trainer(tmp_path / "runs")
    with pytest.raises(Exception):
        t.fit(BoringModel(), datamodule=BoringDataModule(), ckpt_path=str(bad))
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_folder_holding_more_than_startup_files_is_kept(tmp_path):
    logger = CSVLogger(tmp_path)
    t = trainer(tmp_path, logger=logger)
    logger.experiment  # creates the run folder, as a run's start does
    folder = run_folder(t)
    (folder / "checkpoints").mkdir()
    (folder / "config.yaml").write_text("lr: 0.1\n")
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    assert not remove_unused_run_folder(t)
    (folder / "checkpoints" / "last.ckpt").unlink()
    logger.log_metrics({"train/loss": 1.0}, step=0)  # held by the logger, not yet on disk: saved, then kept
    assert not remove_unused_run_folder(t)
    assert files_under(folder) == ["config.yaml", "metrics.csv"]
    (folder / "metrics.csv").unlink()
    assert remove_unused_run_folder(t) and not folder.exists() and tmp_path.is_dir()


# ---- through train.py, as a user runs it (the CLI installs RunConfigCallback and sets W&B's save_dir)
def tiny_config(tmp_path, **data) -> dict:
    return {"model": tiny_lfdn(tmp_path / "cache"), "plots": False,
            "trainer": {"max_epochs": 1, "default_root_dir": "runs/tiny", "enable_progress_bar": False},
            "data": {"benchmark": "digits", "image_size": 32, "batch_size": 8, "train_subset": 16, "eval_subset": 8,
                     **data}}


def test_documented_wandb_one_liner_writes_only_into_the_run_folder(wandb_env, monkeypatch):
    """docs/wandb.md's command, run from a working directory: before, results and checkpoints went to
    ./ood_lightning/<run id>/, config.yaml to ./ (overwritten by the next run) and W&B's files to ./wandb/."""
    import train
    import wandb

    monkeypatch.delenv("WANDB_DIR")
    cwd = wandb_env / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    (wandb_env / "config.json").write_text(json.dumps(tiny_config(wandb_env)))
    try:
        train.main(["--config", str(wandb_env / "config.json"), "--trainer.logger",
                    "{class_path: lightning.pytorch.loggers.WandbLogger, init_args: {project: ood_lightning, "
                    "offline: true}}"])
    finally:
        wandb.finish()
    assert [p.name for p in cwd.iterdir()] == ["runs"]
    root = cwd / "runs" / "tiny"
    assert sorted(p.name for p in root.iterdir()) == ["ood_lightning", "wandb"]
    (run,) = (root / "ood_lightning").iterdir()  # <project>/<run id>: config, checkpoints and results together
    written = set(files_under(run))
    assert {"config.yaml", "results.json", "results.csv", "results.md", "checkpoints/last.ckpt"} <= written
    assert len(list((root / "wandb").glob(f"offline-run-*-{run.name}"))) == 1


def test_train_py_failing_on_a_missing_data_folder_leaves_no_run_folder(tmp_path, monkeypatch):
    """The issue's trial: a run stopped by a missing data folder left runs/<name>/lightning_logs/version_N."""
    import train

    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path, benchmark="folders", id_test=str(tmp_path / "no" / "test"),
                         ood={"x": str(tmp_path / "no" / "ood")})
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="2 path"):
        train.main(["--config", str(tmp_path / "config.json")])
    assert list((tmp_path / "runs" / "tiny").iterdir()) == []
