"""The LFDN settings study's protocol (benchmarks/lfdn_study.py): a table's winner is read on the validation half of
Tiny-ImageNet only, and every setting has a stage of its own."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from ood_lightning.metrics import auroc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import lfdn_study  # noqa: E402  (a script folder, not a package)


IMAGES = 300
_ID = np.random.default_rng(1).normal(0.0, 1.0, IMAGES)
_OOD = np.random.default_rng(2).normal(1.0, 1.0, IMAGES)


def _write(study, name: str, shift: float = 0.0, noise: float = 0.0, noise_seed: int = 3,
           tin_test: float = 0.5) -> None:
    """A finished stage whose tin_val scores are the shared base scores, moved up by `shift` (OOD only: a better
    detector) and blurred by `noise` (both sets: a different detector that is neither better nor worse)."""
    rng = np.random.default_rng(noise_seed)
    id_scores = _ID + noise * rng.normal(size=IMAGES)
    ood_scores = _OOD + shift + noise * rng.normal(size=IMAGES)
    metrics = {"auroc": 0.5, "fpr95": 0.5, "n_id": IMAGES, "n_ood": IMAGES}
    scores = {score: {"tin_val": dict(metrics), "tin_test": dict(metrics), "mnist": dict(metrics)}
              for score in lfdn_study.SCORES}
    scores["mse"]["tin_val"]["auroc"] = auroc(id_scores, ood_scores)
    scores["mse"]["tin_test"]["auroc"] = tin_test
    folder = study.folder(name)
    (folder / "scores").mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"scores": scores}))
    order = np.random.default_rng(4).permutation(IMAGES)  # saved in any order: the study aligns by index
    for dataset, values in (("id", id_scores), ("tin_val", ood_scores)):
        np.savez(folder / "scores" / f"{dataset}.npz", index=order, score_mse=values[order])


@pytest.fixture
def study(tmp_path):
    return lfdn_study.Study(tmp_path / "runs", tmp_path / "data", tmp_path / "cache")


def test_a_setting_must_beat_the_default_beyond_the_noise_on_the_validation_half(study):
    table = next(t for t in lfdn_study.TABLES if t.key == "backbone")
    names = [lfdn_study.stage_name(table, s) for s in table.settings]
    assert names == ["default", "backbone-Lite1", "backbone-Lite2"]
    _write(study, "default", tin_test=0.99)  # best on the reported half: must not matter
    _write(study, "backbone-Lite1", noise=0.2, noise_seed=10)
    point, low, high = lfdn_study.gain(study, "backbone-Lite1")
    assert point > 0 and low < 0 < high  # ahead of the default by chance: the old highest-AUROC rule took it
    assert lfdn_study.winner(study, table) is None  # Lite2 pending: no choice yet
    _write(study, "backbone-Lite2", shift=-0.3)
    assert lfdn_study.winner(study, table) == lfdn_study.DEFAULT
    assert lfdn_study.combined_setting(study) is None  # the other tables are pending


def test_a_real_gain_wins_and_the_largest_real_gain_wins(study):
    _write(study, "default")
    _write(study, "backbone-Lite1", shift=0.3, tin_test=0.0)
    _write(study, "backbone-Lite2", shift=0.6, noise=0.1)
    point, low, _ = lfdn_study.gain(study, "backbone-Lite1")
    assert low > 0 and point < lfdn_study.gain(study, "backbone-Lite2")[0]
    table = next(t for t in lfdn_study.TABLES if t.key == "backbone")
    assert lfdn_study.winner(study, table).label == "Lite2"


def test_stages_that_scored_different_images_are_not_compared(study):
    _write(study, "default")
    _write(study, "backbone-Lite1")
    np.savez(study.folder("backbone-Lite1") / "scores" / "id.npz", index=np.arange(10), score_mse=np.zeros(10))
    with pytest.raises(ValueError, match="different images"):
        lfdn_study.gain(study, "backbone-Lite1")


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


def test_combined_stage_is_named_by_the_winners_it_combines(study, tmp_path):
    for table in lfdn_study.TABLES:
        for setting in table.settings:
            name = lfdn_study.stage_name(table, setting)
            if not study.folder(name).exists():
                _write(study, name, shift=0.5 if setting.label == "Lite2" else 0.0)
    combined = lfdn_study.combined_setting(study)
    assert combined.label == "Lite2"
    assert combined.overrides == ("--model.init_args.backbone.init_args.model_name", "tf_efficientnet_lite2")
    first = lfdn_study.combined_name(combined)
    shutil.rmtree(study.folder("image_size-160_px"))  # a table's winner changes:
    _write(study, "image_size-160_px", shift=0.8)
    study = lfdn_study.Study(study.out, study.root, study.cache)  # a new run of the script
    combined = lfdn_study.combined_setting(study)
    assert combined.label == "Lite2 + 160 px"
    assert lfdn_study.combined_name(combined) not in (first, "combined")  # a new stage, not the old one's results


def test_provisional_combination_takes_the_winners_among_finished_rows(study):
    _write(study, "default")
    assert lfdn_study.combined_setting(study, provisional=True).label == "default"
    _write(study, "backbone-Lite2", shift=0.5)  # Lite1 pending: the table has no final winner yet
    _write(study, "taps-neck_stride_8", shift=0.3)
    _write(study, "image_size-192_px", shift=-0.5)
    assert lfdn_study.combined_setting(study) is None
    combined = lfdn_study.combined_setting(study, provisional=True)
    assert combined.label == "Lite2 + neck stride 8"
    assert lfdn_study.combined_name(combined) == "combined-Lite2+neck_stride_8"
    assert lfdn_study.combined_rows(study)[0] == "Pending: needs every table done."  # not run yet
    _write(study, "combined-Lite2+neck_stride_8", shift=0.8)
    rows = lfdn_study.combined_rows(study)
    assert rows[0].startswith("Provisional") and "backbone" in rows[0] and "Lite2 + neck stride 8" in rows[2]
