"""W&B, offline: a tiny LFDN fit + test with a CSVLogger and an offline WandbLogger writes the offline run files with
the training curves (loss, lr, EMA decay), the test metrics (equal to results.json's), the results table (its rows),
score histograms (their counts), plots and an image grid; W&B failures and missing credentials never stop a run."""
import json
import math
import os
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from jsonargparse import Namespace
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torchvision.utils import make_grid

from ood_lightning import wandb_logging
from ood_lightning.backbones import MultiLayerFeatures
from ood_lightning.data import OODDataModule
from ood_lightning.detectors.lfdn import LFDNDetector
from ood_lightning.evaluation import Evaluation


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """Offline W&B confined to tmp_path: no network, nothing written to the home directory."""
    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")  # restored after the test even though WandbLogger rewrites it
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


class ImageLoggingLFDN(LFDNDetector):
    """Uses the OODDetector.show hook, as DiffGuard does for its input / inversion / synthesis rows."""

    def test_step(self, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and dataloader_idx == 0:
            pictures = batch[self.features.key][:4, :48].reshape(4, 3, 4, 4).sigmoid()
            self.show("features_as_pictures", make_grid(pictures), caption="first ID batch")
        return super().test_step(batch, batch_idx, dataloader_idx)


def wandb_records(data: bytes, block: int = 32768, header: int = 7) -> list:
    """The protobuf records of a W&B run file (wandb.proto's Record). The file is a LevelDB-style log of 32 KiB blocks
    whose chunks carry a 7-byte header (crc, length, type: 1 full, 2 first, 3 middle, 4 last), so a record that
    crosses a block boundary is split; the file itself starts with a 7-byte header (":W&B", magic, version)."""
    from wandb.proto import wandb_internal_pb2

    records, current, pos = [], bytearray(), header
    while pos + header <= len(data):
        left = block - pos % block
        if left < header:  # a block's tail too short for a chunk header is zero padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        assert kind in (1, 2, 3, 4), f"not a W&B log chunk at byte {pos}"
        current += data[pos + header : pos + header + length]
        pos += header + length
        if kind in (1, 4):  # a record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(bytes(current))
            records.append(record)
            current = bytearray()
    return records


def finished_records(path: Path, limit_s: float = 120.0) -> list:
    """The run file's records once W&B has finished writing it (its "exit" record is there): wandb.finish() can
    return while W&B's service process is still flushing the last history row to the file."""
    deadline = time.monotonic() + limit_s
    while True:
        records = wandb_records(path.read_bytes())
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"W&B had not finished writing {path} {limit_s:.0f} s after finish()"
        time.sleep(0.2)


def logged(records: list, kind: str) -> dict:
    """{key: value} of the history ("history") or run config ("config") records; later values win."""
    out = {}
    for record in records:
        if record.WhichOneof("record_type") == kind:
            items = record.history.item if kind == "history" else record.config.update
            for item in items:
                path = [item.key] if item.key else list(item.nested_key)  # media arrive field by field
                target = out
                for part in path[:-1]:
                    target = target.setdefault(part, {})
                target[path[-1]] = json.loads(item.value_json)
    return out


def test_offline_run_files_hold_training_curves_results_and_media(wandb_env):
    import wandb

    tmp = wandb_env
    torch.manual_seed(0)
    model = ImageLoggingLFDN(backbone=MultiLayerFeatures(weights=None), hidden_dim=32, num_blocks=1,
                             cache_dir=str(tmp / "cache"))
    dm = OODDataModule(benchmark="digits", image_size=32, batch_size=16, train_subset=48, eval_subset=21)
    csv_logger = CSVLogger(tmp / "runs")
    wandb_logger = WandbLogger(save_dir=str(tmp), offline=True, project="ood_lightning")
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=[csv_logger, wandb_logger], log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp),
                        callbacks=[Evaluation()])
    try:
        trainer.fit(model, datamodule=dm)
        trainer.test(model, datamodule=dm, verbose=False)
    finally:
        wandb.finish()

    runs = sorted((tmp / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, sorted((tmp / "wandb").iterdir())
    logs = list(runs[0].glob("run-*.wandb"))
    assert len(logs) == 1 and logs[0].stat().st_size > 0
    records = finished_records(logs[0])
    history, config = logged(records, "history"), logged(records, "config")
    run_dir = Path(csv_logger.log_dir)  # the CSV logger came first: results, plots and metrics.csv share its folder
    results = json.loads((run_dir / "results.json").read_text())

    for key in ("train/loss", "train/lr", "train/ema_decay"):  # training curves reach W&B
        assert math.isfinite(history[key]), key
    assert config["config_hash"] == results["config_hash"]

    # every metric W&B shows is results.json's number under the same name (logged as float32)
    metrics = {f"test/{ood_set}/{score}/{metric}": value for score, sets in results["scores"].items()
               for ood_set, row in sets.items() for metric, value in row.items() if not metric.startswith("n_")}
    assert len(metrics) == 6 * 5
    for key, value in metrics.items():
        assert history[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key

    # the results table: results.csv's columns, one row per (score, set) holding results.json's values, metrics in
    # percent as the headers say
    table_file = runs[0] / "files" / history["test/results"]["path"]
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["score", "ood_set", "auroc_percent", "aupr_in_percent", "aupr_out_percent",
                                "fpr95_percent", "fpr95_openood_percent", "n_id", "n_ood", "n_skipped"]
    rows = {(r[0], r[1]): dict(zip(table["columns"], r)) for r in table["data"]}
    assert len(rows) == 6
    for score, sets in results["scores"].items():
        for key, value in sets["digits_5_9"].items():
            column, value = (key, value) if key.startswith("n_") else (f"{key}_percent", 100 * value)
            assert rows[score, "digits_5_9"][column] == pytest.approx(value, rel=1e-12), (score, column)

    # score histograms: every sample of the set counted once, between the set's smallest and largest score
    for name in ("id", "digits_5_9"):
        with np.load(run_dir / "scores" / f"{name}.npz") as npz:
            scores = npz["score_mse"]
        hist = history[f"test/{name}/mse/histogram"]
        assert hist["_type"] == "histogram" and sum(hist["values"]) == len(scores) == 21
        assert (hist["bins"][0], hist["bins"][-1]) == pytest.approx((scores.min(), scores.max()), rel=1e-6)

    assert history["grids/features_as_pictures"]["_type"] == "images/separated"  # the show hook
    assert (run_dir / "grids" / "features_as_pictures.png").is_file()
    media = [p.relative_to(runs[0]).as_posix() for p in runs[0].rglob("*") if p.is_file()]
    assert sum("media/images/test/plots" in p for p in media) == 12  # hist + roc for the 6 LFDN score types
    assert any("media/images/grids/features_as_pictures" in p for p in media), media
    assert (run_dir / "plots" / "roc_mse.png").is_file()
    header, *csv_rows = (run_dir / "metrics.csv").read_text().splitlines()
    columns = header.split(",")
    for key in ("train/loss", "train/lr", "train/ema_decay"):
        values = [r.split(",")[columns.index(key)] for r in csv_rows]
        assert any(v and math.isfinite(float(v)) for v in values), key


def _trainer_config(*loggers: str, **init_args) -> Namespace:
    """A parsed trainer section with these logger classes (as LightningCLI hands it over before building them)."""
    configs = [Namespace(class_path=f"lightning.pytorch.loggers.{name}", init_args=Namespace(**init_args))
               for name in loggers]
    return Namespace(logger=configs if len(configs) != 1 else configs[0], default_root_dir="runs")


def test_no_credentials_switch_to_offline(wandb_env, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    logger = _trainer_config("CSVLogger", "WandbLogger", project="p")
    assert not wandb_logging.wandb_credentials_found()
    assert wandb_logging.wandb_offline_without_credentials(_trainer_config("WandbLogger", offline=True)) is False
    assert "WANDB_MODE" not in os.environ  # an offline logger needs no switch
    with pytest.warns(UserWarning, match="logged offline"):
        assert wandb_logging.wandb_offline_without_credentials(logger) is True
    assert os.environ["WANDB_MODE"] == "offline"

    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # a key: leave the mode to W&B
    assert wandb_logging.wandb_offline_without_credentials(logger) is False
    assert "WANDB_MODE" not in os.environ
    monkeypatch.delenv("WANDB_API_KEY")
    assert wandb_logging.wandb_offline_without_credentials(_trainer_config("CSVLogger")) is False  # no W&B logger
    assert "WANDB_MODE" not in os.environ
    (wandb_env / "no_netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "y" * 40 + "\n")
    os.chmod(wandb_env / "no_netrc", 0o600)
    assert wandb_logging.wandb_credentials_found()


def test_wandb_failures_become_warnings(wandb_env, monkeypatch):
    logger = WandbLogger(save_dir=str(wandb_env), offline=True, project="p")

    def unreachable(*args, **kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(logger, "log_table", unreachable)
    monkeypatch.setattr(logger, "log_image", unreachable)
    results = {"scores": {"s": {"o": {"auroc": 0.5, "aupr_in": 0.5, "aupr_out": 0.5, "fpr95": 1.0,
                                      "fpr95_openood": 1.0, "n_id": 1, "n_ood": 1, "n_skipped": 0}}}}
    with pytest.warns(UserWarning, match="W&B results logging failed.*unreachable"):
        wandb_logging.log_results_to_wandb([logger], results, {})
    with pytest.warns(UserWarning, match="W&B image logging failed.*unreachable"):
        wandb_logging.log_image_grid([logger], "k", torch.zeros(2, 3, 4, 4))
