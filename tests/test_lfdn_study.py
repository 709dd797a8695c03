"""The LFDN settings study's protocol (benchmarks/lfdn_study.py): a table's winner is read on the validation half of
Tiny-ImageNet only, and every setting has a stage of its own."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import lfdn_study  # noqa: E402  (a script folder, not a package)


def _write(study, name: str, tin_val: float, tin_test: float) -> None:
    metrics = {"auroc": 0.5, "fpr95": 0.5, "n_id": 10, "n_ood": 10}
    scores = {score: {"tin_val": dict(metrics), "tin_test": dict(metrics), "mnist": dict(metrics)}
              for score in lfdn_study.SCORES}
    scores["mse"]["tin_val"]["auroc"], scores["mse"]["tin_test"]["auroc"] = tin_val, tin_test
    folder = study.folder(name)
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"scores": scores}))


@pytest.fixture
def study(tmp_path):
    return lfdn_study.Study(tmp_path / "runs", tmp_path / "data", tmp_path / "cache")


def test_winner_is_chosen_on_the_validation_half_only(study):
    table = next(t for t in lfdn_study.TABLES if t.key == "backbone")
    names = [lfdn_study.stage_name(table, s) for s in table.settings]
    assert names == ["default", "backbone-Lite1", "backbone-Lite2"]
    _write(study, "default", tin_val=0.70, tin_test=0.90)  # best on the reported half: must not matter
    _write(study, "backbone-Lite1", tin_val=0.75, tin_test=0.60)
    assert lfdn_study.winner(study, table) is None  # Lite2 pending: no choice yet
    _write(study, "backbone-Lite2", tin_val=0.72, tin_test=0.95)
    assert lfdn_study.winner(study, table).label == "Lite1"
    assert lfdn_study.combined_setting(study) is None  # the other tables are pending


def test_every_setting_has_its_own_stage_and_the_default_is_shared():
    pairs = [(lfdn_study.stage_name(t, s), s) for t in lfdn_study.TABLES for s in t.settings]
    by_name = {}
    for name, setting in pairs:
        by_name.setdefault(name, set()).add(setting)
    assert all(len(settings) == 1 for settings in by_name.values())
    assert all(lfdn_study.DEFAULT in t.settings for t in lfdn_study.TABLES)
    scoring = next(t for t in lfdn_study.TABLES if t.key == "scoring")
    assert all(s.scoring_only for s in scoring.settings if not s.is_default)


def test_scoring_settings_score_the_default_checkpoint(study):
    setting = next(s for t in lfdn_study.TABLES for s in t.settings if s.scoring_only)
    ckpt = study.folder("default") / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    stage = study.stage("scoring-x", setting)
    assert stage.command[0] == "evaluate.py" and stage.command[stage.command.index("--ckpt_path") + 1] == str(ckpt)
    assert stage.command[-len(setting.overrides):] == list(setting.overrides)  # the setting's overrides come last
    assert stage.done == study.folder("scoring-x") / "results.json"


def test_combined_stage_is_named_by_the_winners_it_combines(study):
    for table in lfdn_study.TABLES:
        for setting in table.settings:
            name = lfdn_study.stage_name(table, setting)
            if not study.folder(name).exists():
                _write(study, name, tin_val=0.80 if setting.label == "Lite2" else 0.70, tin_test=0.70)
    combined = lfdn_study.combined_setting(study)
    assert combined.label == "Lite2"
    assert combined.overrides == ("--model.init_args.backbone.init_args.model_name", "tf_efficientnet_lite2")
    first = lfdn_study.combined_name(combined)
    (study.folder("image_size-160_px") / "results.json").unlink()  # a table's winner changes:
    study.folder("image_size-160_px").rmdir()
    _write(study, "image_size-160_px", tin_val=0.90, tin_test=0.70)
    combined = lfdn_study.combined_setting(study)
    assert combined.label == "Lite2 + 160 px"
    assert lfdn_study.combined_name(combined) not in (first, "combined")  # a new stage, not the old one's results
