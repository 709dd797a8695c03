"""CascadeFusion: the cascade's tier and order properties, the squash's resolution, thresholds from ID validation
only, and end-to-end runs through the evaluation on sklearn digits (random CIFAR ResNet-20 for MLS and KNN; as
refiner a stub scoring image brightness, DiffGuardGDM on a tiny random UNet, a tiny random LFDN on cached features,
and LFDN as baseline too). The scores are meaningless; the ordering rules, the wiring and the errors are what is
checked."""
import csv
import json

import numpy as np
import pytest
import torch
import yaml

from diffguard_helpers import save_tiny_unet
from script_runs import tiny_lfdn

import evaluate
from ood_lightning.cli import make_cli
from ood_lightning.data.datamodule import collate
from ood_lightning.detectors.base import OODDetector
from ood_lightning.detectors.baselines import ClassifierBaselines
from ood_lightning.detectors.fusion import CascadeFusion, _split, cascade, squash, tiers

N = 8  # images per test set


class Brightness(OODDetector):
    """A refiner without diffusion: brighter images score higher. Reports a `prediction` (clashes with the
    baseline's) and records that its test-start hook ran."""

    score_names = ("brightness",)
    extra_names = ("prediction",)

    def on_test_start(self) -> None:
        self.started = True

    def score(self, batch: dict, dataset: str) -> dict:
        x = batch["image"].float()
        return {"brightness": x.mean((1, 2, 3)), "prediction": torch.full((len(x),), 7, dtype=torch.int64)}


def _baseline(scores=("mls",)) -> ClassifierBaselines:
    return ClassifierBaselines("cifar_resnet20", None, scores=list(scores), num_classes=10)


# -------------------------------------------------------------------------------------------- the cascade
def _lexicographic_ok(b, d, fused, low, high):
    """fused sorts samples by (tier, b in tiers 0/2, d in tier 1)."""
    tier = tiers(b, low, high)
    key = torch.where(tier == 1, d.double(), b.double())
    order = torch.argsort(fused)
    t, k = tier[order], key[order]
    return bool((t.diff() >= 0).all() and ((t.diff() > 0) | (k.diff() >= 0)).all())


def test_tiers_are_ranked_and_ordered_by_the_right_score():
    g = torch.Generator().manual_seed(0)
    validation = torch.randn(500, generator=g, dtype=torch.float64)
    low, high = torch.quantile(validation, torch.tensor([0.1, 0.9], dtype=torch.float64)).tolist()
    b, d = torch.randn(300, generator=g) * 2, torch.randn(300, generator=g) * 50
    fused = cascade(b, d, low, high)
    assert fused.dtype == torch.float64
    tier = tiers(b, low, high)
    assert set(tier.tolist()) == {0, 1, 2}
    assert fused[tier == 0].max() < fused[tier == 1].min() and fused[tier == 1].max() < fused[tier == 2].min()
    assert _lexicographic_ok(b, d, fused, low, high)
    for t, key in ((0, b), (1, d), (2, b)):  # within a tier, the fused order is exactly that score's order
        sel = tier == t
        assert torch.equal(torch.argsort(fused[sel]), torch.argsort(key[sel].double()))


def test_confident_decisions_ignore_the_refiner_and_the_band_ignores_the_baseline():
    g = torch.Generator().manual_seed(1)
    b, d = torch.randn(200, generator=g), torch.randn(200, generator=g)
    low, high = -1.0, 1.0
    tier = tiers(b, low, high)
    fused = cascade(b, d, low, high)
    other = cascade(b, -1e9 * torch.randn(200, generator=g), low, high)  # any other refiner scores
    torch.testing.assert_close(fused[tier != 1], other[tier != 1], rtol=0, atol=0)
    assert ((other[tier == 1] > 1) & (other[tier == 1] < 2)).all()
    shuffled = b.clone()
    shuffled[tier == 1] = torch.empty(int((tier == 1).sum())).uniform_(-0.99, 0.99, generator=g)
    torch.testing.assert_close(fused, cascade(shuffled, d, low, high), rtol=0, atol=0)


def test_boundaries_nan_and_infinities():
    b = torch.tensor([-1.0, 1.0, float("nan"), float("-inf"), float("inf"), 0.0, 0.0])
    d = torch.tensor([5.0, -5.0, 0.0, 0.0, 0.0, float("inf"), float("-inf")])
    assert tiers(b, -1.0, 1.0).tolist() == [0, 2, 1, 0, 2, 1, 1]  # b == low / high is confident; NaN b is not
    fused = cascade(b, d, -1.0, 1.0)
    assert fused[3] < fused[0] < fused[6] < fused[2] < fused[5] < fused[1] < fused[4]
    assert tiers(torch.tensor([0.5]), 0.5, 0.5).tolist() == [0]  # an empty band: b == low == high is ID


def test_squash_keeps_large_magnitudes_distinct():
    g = torch.Generator().manual_seed(2)
    for scale in (1.0, 1e6, 1e12):
        z = (torch.randn(10_000, generator=g, dtype=torch.float64) * scale).sort().values
        assert (squash(z).diff() > 0).all(), scale
        assert (squash(z) > 0).all() and (squash(z) < 1).all()
    near = torch.tensor([1e6, 1e6 + 1e-3, 1e6 + 2e-3], dtype=torch.float64)  # relative steps of 1e-9
    assert (cascade(near, torch.zeros(3), -1.0, 1.0).diff() > 0).all()
    big = torch.tensor([1e30, 3e38], dtype=torch.float32)  # float32 neighbours at huge magnitudes
    z = torch.stack([big, torch.nextafter(big, torch.tensor(float("inf")))], 1).reshape(-1)
    assert (squash(z).diff() > 0).all()


class _InMemory(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": 0, "index": i}


def test_thresholds_come_from_validation_scores_only():
    fusion = CascadeFusion(_baseline(), Brightness(), "mls", "brightness", quantiles=(0.1, 0.9))
    g = torch.Generator().manual_seed(3)
    validation = _InMemory(torch.rand(30, 3, 8, 8, generator=g))
    loader = lambda ds: torch.utils.data.DataLoader(ds, batch_size=7, collate_fn=collate)  # noqa: E731
    low, high = fusion.calibrate(validation, loader)
    expected = fusion.baseline.score({"image": validation.images}, "v")["mls"].double()
    np.testing.assert_allclose([low, high], torch.quantile(expected, torch.tensor([0.1, 0.9], dtype=torch.float64)),
                               rtol=1e-6)
    for scale in (1.0, 1e3):  # scoring any test batch leaves the thresholds alone
        out = fusion.score({"image": scale * torch.rand(5, 3, 8, 8, generator=g)}, "ood")
        assert (fusion.low, fusion.high) == (low, high)
        assert set(out) == {"mls", "brightness", "brightness+mls", "tier", "prediction", "refiner_prediction"}


# --------------------------------------------------------------------------------------- the evaluator
def _config(tmp_path, refiner, refiner_score, trainer=(), **fusion):
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "default_root_dir": str(tmp_path), "enable_progress_bar": False,
                    "logger": False, **dict(trainer)},
        "model": {"class_path": "ood_lightning.detectors.fusion.CascadeFusion", "init_args": {
            "baseline": {"class_path": "ood_lightning.detectors.baselines.ClassifierBaselines",
                         "init_args": {"classifier": "cifar_resnet20", "classifier_weights": None,
                                       "num_classes": 10, "scores": ["mls"]}},
            "refiner": refiner, "baseline_score": "mls", "refiner_score": refiner_score,
            "quantiles": [0.2, 0.8], "validation_size": 20, **fusion}},
        "data": {"benchmark": "digits", "image_size": 16, "eval_subset": N, "train_subset": 40, "batch_size": 4},
        "plots": False, "results_dir": str(tmp_path),
    }
    path = tmp_path / "config.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return ["--config", str(path)]


def _run(args):
    cli = make_cli(args, description="test")
    cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    return cli


def _scores(out, name):
    with np.load(out / "scores" / f"{name}.npz") as f:
        return {key: f[key] for key in f.files}


def _check_fused_files(out, refiner_score, baseline="mls", refine_all=False):
    """The tables hold the baseline, the fusion and (refine_all) the refiner; the npz files the tiers, the refiner's
    score where it ran (NaN elsewhere) and the fused order; results.json the tier counts and the cost per set."""
    results = json.loads((out / "results.json").read_text())
    fused_name = f"{refiner_score}+{baseline}"
    assert set(results["scores"]) == {baseline, fused_name} | ({refiner_score} if refine_all else set())
    info = results["fusion"]
    assert info["fused_score"] == fused_name and info["quantiles"] == [0.2, 0.8] and info["low"] <= info["high"]
    assert info["refine_all"] is refine_all
    for name in ("id", "digits_5_9"):
        s = _scores(out, name)
        assert len(s["index"]) == N
        d = s[f"score_{refiner_score}" if refine_all else f"extra_{refiner_score}"]
        b, fused = (torch.from_numpy(s[f"score_{k}"]) for k in (baseline, fused_name))
        tier = tiers(b, info["low"], info["high"])
        np.testing.assert_array_equal(s["extra_tier"], tier.numpy())
        assert dict(zip(("id_confident", "band", "ood_confident"), np.bincount(tier, minlength=3).tolist())) == \
            info["tiers"][name]
        ran = np.ones(N, dtype=bool) if refine_all else (tier == 1).numpy()
        np.testing.assert_array_equal(np.isfinite(d), ran)  # the refiner ran exactly on the band
        cost = info["cost"][name]
        assert cost["images"] == N and cost["refined"] == ran.sum() and cost["refined_fraction"] == ran.mean()
        assert cost["baseline_seconds"] >= 0 and cost["refiner_seconds"] >= 0
        assert _lexicographic_ok(b, torch.from_numpy(d), fused, info["low"], info["high"])
    _check_tables_agree(out, results)
    return results


def _check_tables_agree(out, results):
    """results.csv and results.md hold results.json's rows (fused score included): written once, together."""
    with open(out / "results.csv") as f:
        rows = {(r["score"], r["ood_set"]): r for r in csv.DictReader(f)}
    expected = {(score, ood_set): m for score, sets in results["scores"].items() for ood_set, m in sets.items()}
    assert rows.keys() == expected.keys()
    markdown = (out / "results.md").read_text()
    for (score, ood_set), m in expected.items():
        assert float(rows[score, ood_set]["auroc_percent"]) == pytest.approx(100 * m["auroc"], rel=1e-12)
        assert f"| {score} | {ood_set} | {100 * m['auroc']:.2f} |" in markdown


def test_fusion_through_the_evaluator(tmp_path):
    cli = _run(_config(tmp_path, {"class_path": f"{__name__}.Brightness"}, "brightness"))
    model, dm = cli.model, cli.datamodule
    _check_fused_files(tmp_path, "brightness")
    s = _scores(tmp_path, "id")
    band = s["extra_tier"] == 1
    assert (s["extra_refiner_prediction"][band] == 7).all() and np.isnan(s["extra_refiner_prediction"][~band]).all()
    assert "extra_prediction" in s
    assert model.refiner.started  # the hook is forwarded
    # The thresholds are the quantiles of the baseline on the seeded train sample, whatever the test sets hold.
    validation, _ = _split(len(dm.train_set), 20, 0)
    images = torch.stack([dm.train_set[i]["image"] for i in validation])
    b = model.baseline.eval().score({"image": images}, "v")["mls"].double()
    expected = torch.quantile(b, torch.tensor([0.2, 0.8], dtype=torch.float64)).tolist()
    np.testing.assert_allclose([model.low, model.high], expected, rtol=1e-6)
    other = _run(_config(tmp_path / "other", {"class_path": f"{__name__}.Brightness"}, "brightness")
                 + ["--data.eval_subset", "5"]).model
    assert (other.low, other.high) == (model.low, model.high)


class CountingBrightness(Brightness):
    """Brightness that records how many images it was given."""

    seen = 0

    def score(self, batch: dict, dataset: str) -> dict:
        CountingBrightness.seen += len(batch["image"])
        return super().score(batch, dataset)


def test_the_band_only_cascade_gives_the_full_runs_fused_results(tmp_path):
    refiner = {"class_path": f"{__name__}.CountingBrightness"}
    CountingBrightness.seen = 0
    _run(_config(tmp_path / "all", refiner, "brightness", refine_all=True))
    assert CountingBrightness.seen == 2 * N
    full = _check_fused_files(tmp_path / "all", "brightness", refine_all=True)
    CountingBrightness.seen = 0
    _run(_config(tmp_path / "band", refiner, "brightness"))
    band = _check_fused_files(tmp_path / "band", "brightness")
    assert CountingBrightness.seen == sum(t["band"] for t in band["fusion"]["tiers"].values()) < 2 * N
    for score in ("mls", "brightness+mls"):  # the same table, less the unfused refiner row
        assert band["scores"][score] == full["scores"][score]
    assert band["fusion"]["tiers"] == full["fusion"]["tiers"]
    for name in ("id", "digits_5_9"):
        a, b = _scores(tmp_path / "all", name), _scores(tmp_path / "band", name)
        np.testing.assert_array_equal(a["score_brightness+mls"], b["score_brightness+mls"])
        ran = b["extra_tier"] == 1
        np.testing.assert_array_equal(a["score_brightness"][ran], b["extra_brightness"][ran])


def test_a_fitted_baseline_is_fitted_beside_the_validation_sample_with_its_own_hparams(tmp_path):
    args = _config(tmp_path, {"class_path": f"{__name__}.Brightness"}, "brightness", baseline_score="knn")
    model = _run(args + ["--model.init_args.baseline.init_args.scores", "[knn]",
                         "--model.init_args.baseline.init_args.knn_k", "3"]).model
    assert model.baseline.hparams.knn_k == 3 and "refiner" not in model.baseline.hparams  # not the fusion's config
    assert len(model.baseline.knn_bank) == 40 - 20  # the train images outside the validation sample
    _check_fused_files(tmp_path, "brightness", baseline="knn")


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    return save_tiny_unet(tmp_path_factory.mktemp("tiny_unet"))


def _gdm(unet_dir):
    return {"class_path": "ood_lightning.detectors.diffguard.gdm.DiffGuardGDM", "init_args": {
        "diffusion_model": str(unet_dir), "classifier": "cifar_resnet20", "classifier_weights": None,
        "num_classes": 10, "num_steps": 6, "max_inversion_steps": 4, "stop_psnr": 14.0,
        "stop_dists_similarity": None, "cutouts": 0, "cutout_size": 16, "similarities": ["logits_l1"],
        "grid_images": 2}}


def test_fusion_with_diffguard_gdm(unet_dir, tmp_path):
    """The band-only cascade on DiffGuardGDM: the refiner's passes are counted where it ran, and the fused results
    are a full run's (each band image gets the scores it gets in the full batch, to float rounding)."""
    model = _run(_config(tmp_path, _gdm(unet_dir), "logits_l1", trainer={"inference_mode": False})).model
    assert model.refiner.hparams.grid_images == 2
    band = _check_fused_files(tmp_path, "logits_l1")
    assert (tmp_path / "grids" / "id.png").is_file()  # DiffGuard's grids, shown through the evaluation
    _run(_config(tmp_path / "all", _gdm(unet_dir), "logits_l1", trainer={"inference_mode": False}, refine_all=True))
    full = _check_fused_files(tmp_path / "all", "logits_l1", refine_all=True)
    assert band["fusion"]["tiers"] == full["fusion"]["tiers"]
    for name in ("id", "digits_5_9"):
        a, b = _scores(tmp_path / "all", name), _scores(tmp_path, name)
        ran = b["extra_tier"] == 1
        np.testing.assert_allclose(b["extra_logits_l1"][ran], a["score_logits_l1"][ran], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b["score_logits_l1+mls"], a["score_logits_l1+mls"], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(b["extra_unet_evals"][ran], a["extra_unet_evals"][ran])
        cost_band, cost_full = band["fusion"]["cost"][name], full["fusion"]["cost"][name]
        assert cost_band["refiner_unet_evals_per_image"] == pytest.approx(b["extra_unet_evals"][ran].sum() / N)
        assert cost_full["refiner_unet_evals_per_image"] == pytest.approx(a["extra_unet_evals"].mean())
        assert cost_band["refiner_classifier_evals_per_image"] <= cost_full["refiner_classifier_evals_per_image"]
    for score in ("mls", "logits_l1+mls"):
        assert band["scores"][score]["digits_5_9"]["auroc"] == full["scores"][score]["digits_5_9"]["auroc"]
    with pytest.raises(RuntimeError, match="inference_mode: false"):
        _run(_config(tmp_path / "inference", _gdm(unet_dir), "logits_l1", trainer={"inference_mode": True}))


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs, match", [
    ({"baseline_score": "knn"}, "baseline_score 'knn' is not a score of the baseline ClassifierBaselines"),
    ({"refiner_score": "dists"}, "refiner_score 'dists' is not a score"),
    ({"quantiles": (0.5, 0.5)}, "0 < q_low < q_high < 1"),
    ({"quantiles": (0.0, 0.9)}, "0 < q_low < q_high < 1"),
    ({"quantiles": (0.9, 0.1)}, "0 < q_low < q_high < 1"),
    ({"quantiles": (0.1, 0.5, 0.9)}, "0 < q_low < q_high < 1"),
    ({"validation_size": 0}, "validation_size must be at least 1"),
])
def test_bad_arguments_fail_at_construction(kwargs, match):
    args = {"baseline_score": "mls", "refiner_score": "brightness", **kwargs}
    with pytest.raises(ValueError, match=match):
        CascadeFusion(_baseline(), Brightness(), **args)


def test_clashing_or_misplaced_children_fail_at_construction():
    with pytest.raises(ValueError, match="both 'mls'"):
        CascadeFusion(_baseline(), _baseline(), "mls", "mls")
    baseline = _baseline(("mls", "msp"))
    with pytest.raises(ValueError, match="two detectors"):
        CascadeFusion(baseline, baseline, "mls", "msp")


def test_setup_errors_name_the_fix(tmp_path):
    refiner = {"class_path": f"{__name__}.Brightness"}
    with pytest.raises(RuntimeError, match="has none here"):
        _run(_config(tmp_path, refiner, "brightness") + ["--data.train", "false"])
    knn = _config(tmp_path, refiner, "brightness", validation_size=40)
    with pytest.raises(ValueError, match="none are left to fit the baseline"):
        _run(knn + ["--model.init_args.baseline.init_args.scores", "[knn]", "--model.init_args.baseline_score",
                    "knn"])
    with pytest.raises(RuntimeError, match="thresholds are not set"):
        CascadeFusion(_baseline(), Brightness(), "mls", "brightness").score({"image": torch.rand(2, 3, 8, 8)}, "id")


# ------------------------------------------------------------------------------- any detector composes
def _lfdn(tmp_path):
    model = tiny_lfdn(tmp_path / "cache")
    model["init_args"]["allow_untrained"] = True
    return model


def _lfdn_alone(tmp_path, out):
    """The same tiny LFDN scored on its own, for its scores inside a fusion to be compared with."""
    args = _config(out, {"class_path": f"{__name__}.Brightness"}, "brightness")
    config = yaml.safe_load(open(args[1]))
    config["model"] = _lfdn(tmp_path)
    config["results_dir"] = str(out)
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    evaluate.main(args)
    return {name: _scores(out, name) for name in ("id", "digits_5_9")}


def test_lfdn_as_refiner_reads_features_while_the_baseline_reads_images(tmp_path):
    cli = _run(_config(tmp_path / "fusion", _lfdn(tmp_path), "mse"))
    results = _check_fused_files(tmp_path / "fusion", "mse")
    assert results["fusion"]["validation_images"] == 20
    alone = _lfdn_alone(tmp_path, tmp_path / "alone")
    for name in ("id", "digits_5_9"):  # the features LFDN gets inside the fusion are the ones it gets alone
        fused = _scores(tmp_path / "fusion", name)
        band = fused["extra_tier"] == 1
        np.testing.assert_allclose(fused["extra_mse"][band], alone[name]["score_mse"][band], rtol=1e-5)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3  # train, id, digits_5_9: one backbone pass each
    assert cli.model.inputs.images and [f.key for f in cli.model.inputs.features] == [cli.model.refiner.features.key]


def test_lfdn_as_baseline_is_calibrated_on_features(tmp_path):
    refiner = {"class_path": f"{__name__}.Brightness"}
    cli = _run(_config(tmp_path, refiner, "brightness", baseline=_lfdn(tmp_path), baseline_score="mse"))
    model, dm = cli.model, cli.datamodule
    results = _check_fused_files(tmp_path, "brightness", baseline="mse")
    train = dm.served(dm.train_set, "train")  # from the cache the fusion's setup wrote
    validation, _ = _split(len(train), 20, 0)
    batch = collate([train[i] for i in validation])
    assert "image" in batch  # the Brightness refiner reads images: they are served beside the features
    b = model.baseline.score(batch, "id_validation")["mse"].double()
    expected = torch.quantile(b, torch.tensor([0.2, 0.8], dtype=torch.float64)).tolist()
    np.testing.assert_allclose([results["fusion"]["low"], results["fusion"]["high"]], expected, rtol=1e-6)


def test_two_classifier_baselines_fit_through_the_interface(tmp_path):
    refiner = {"class_path": "ood_lightning.detectors.baselines.ClassifierBaselines",
               "init_args": {"classifier": "cifar_resnet20", "classifier_weights": None, "num_classes": 10,
                             "scores": ["knn"], "knn_k": 3, "seed": 1}}
    model = _run(_config(tmp_path, refiner, "knn")).model
    assert not model.baseline.needs_fit and not model.refiner.needs_fit
    assert len(model.refiner.knn_bank) == 40  # the refiner is fitted on the whole train split
    results = _check_fused_files(tmp_path, "knn")
    s = _scores(tmp_path, "id")
    assert "extra_prediction" in s and "extra_refiner_prediction" in s
    assert set(results["scores"]) == {"mls", "knn+mls"}


def test_from_scores_keeps_the_fusion_block(tmp_path):
    _run(_config(tmp_path, {"class_path": f"{__name__}.Brightness"}, "brightness"))
    before = json.loads((tmp_path / "results.json").read_text())
    assert set(before["fusion"]["cost"]["id"]) >= {"images", "refined", "refined_fraction", "refiner_seconds"}
    rescored = evaluate.rescore_main(["--from_scores", str(tmp_path), "--out_dir", str(tmp_path / "again"),
                                      "--plots", "false"])
    assert rescored["fusion"] == before["fusion"]  # thresholds, tier counts and cost survive
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["fusion"] == before["fusion"] and again["scores"] == before["scores"]
    _check_tables_agree(tmp_path / "again", again)


def test_the_fusion_block_is_in_the_results_every_file_is_written_from(tmp_path, monkeypatch):
    import ood_lightning.evaluation as evaluation

    written = []
    real = evaluation.write_results
    monkeypatch.setattr(evaluation, "write_results",
                        lambda out, results, *a, **k: written.append(dict(results)) or real(out, results, *a, **k))
    _run(_config(tmp_path, {"class_path": f"{__name__}.Brightness"}, "brightness"))
    assert len(written) == 1 and written[0]["fusion"] == json.loads((tmp_path / "results.json").read_text())["fusion"]


def test_baseline_and_refiner_with_the_same_classifier_hold_one_copy(unet_dir, tmp_path):
    from ood_lightning.classifiers import Classifier, build_classifier
    from ood_lightning.detectors.diffguard.gdm import DiffGuardGDM

    files = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        files.append(str(tmp_path / f"resnet20_{seed}.pt"))
        torch.save(build_classifier("cifar_resnet20", None, 10).net.state_dict(), files[-1])
    gdm = {key: value for key, value in _gdm(unet_dir)["init_args"].items() if key != "classifier_weights"}

    def fusion(baseline_file, refiner_file):
        return CascadeFusion(ClassifierBaselines("cifar_resnet20", baseline_file, scores=["mls"]),
                             DiffGuardGDM(**gdm, classifier_weights=refiner_file), "mls", "logits_l1")

    shared = fusion(files[0], files[0])
    assert shared.shared_classifier and shared.baseline.classifier is shared.refiner.classifier
    assert sum(isinstance(m, Classifier) for m in shared.modules()) == 1
    apart = fusion(files[0], files[1])  # other weights: two networks
    assert not apart.shared_classifier and apart.baseline.classifier is not apart.refiner.classifier
    images = {"image": torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))}
    torch.testing.assert_close(shared.baseline.eval().score(images, "id")["mls"],
                               apart.baseline.eval().score(images, "id")["mls"], rtol=0, atol=0)
