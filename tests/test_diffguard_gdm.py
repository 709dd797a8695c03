"""DiffGuardGDM end to end through the evaluator, on a tiny random diffusers UNet and a random CIFAR ResNet-20 at
16 px (sklearn digits, 0-4 in distribution, 5-9 OOD): batch-size independence, per-sample cost accounting, oracle
labels, image grids and the start-up errors. The scores are meaningless; their determinism is what is checked."""
import numpy as np
import pytest
import torch

from diffguard_helpers import evaluate_args, run_evaluate, save_tiny_unet, unlabelled_folders
from ood_lightning.cli import make_cli
from ood_lightning.detectors.diffguard import similarity as similarity_module
from ood_lightning.detectors.diffguard.gdm import DiffGuardGDM
from ood_lightning.detectors.diffguard.similarity import dists_similarity_unclamped
from ood_lightning.noise import sample_seed
from ood_lightning.training.diffusion import ClassConditionalDiffusion
from piq_weights import write_piq_weight_files
from script_runs import TINY_UNET

N = 6  # images per test set


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    return save_tiny_unet(tmp_path_factory.mktemp("tiny_unet"))


def _args(unet_dir, out, batch_size, **model):
    init = {"diffusion_model": str(unet_dir), "classifier": "cifar_resnet20", "classifier_weights": None,
            "num_classes": 10, "num_steps": 10, "max_inversion_steps": 8, "stop_psnr": 14.0,
            "stop_dists_similarity": None, "cutouts": 2, "cutout_size": 12,
            "similarities": ["l2", "psnr", "logits_l1"], "grid_images": 4, **model}
    return evaluate_args("ood_lightning.detectors.diffguard.gdm.DiffGuardGDM", init, out, batch_size, N) + [
        "--results_dir", str(out)]


def _scores(out, name):
    with np.load(out / "scores" / f"{name}.npz") as f:
        return {key: f[key] for key in f.files}


# Batch composition enters only through float rounding: torch's CPU kernels block a batch of 1 and a batch of 4
# differently, and the instruction set (ATEN_CPU_CAPABILITY) changes the blocking again. Guided sampling on this
# random UNet amplifies that rounding. Largest relative score difference between batch 1 and batch 4 measured on
# this test's 12 images: 1.5e-5 with the default kernels, 1.4e-4 with AVX2, 4.9e-4 with AVX-512. The tolerance is
# 4x the largest. A wiring error moves scores far more: a sample given another crop sequence (the control below)
# changes the largest relative difference of every score type by at least 3.7e-2, over 18x the tolerance.
BATCH_RTOL = 2e-3


@pytest.fixture(scope="module")
def runs(unet_dir, tmp_path_factory):
    out = {}
    for batch_size in (1, 4):
        folder = tmp_path_factory.mktemp(f"gdm_b{batch_size}")
        run_evaluate(_args(unet_dir, folder, batch_size))
        out[batch_size] = folder
    return out


def _largest_relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.abs(b)))


def test_scores_do_not_depend_on_batch_size(runs):
    for name in ("id", "digits_5_9"):
        one, four = _scores(runs[1], name), _scores(runs[4], name)
        assert len(one["index"]) == N
        for key in ("l2", "psnr", "logits_l1"):
            difference = _largest_relative_difference(four[f"score_{key}"], one[f"score_{key}"])
            assert difference <= BATCH_RTOL, f"{name} {key}: batch 4 differs from batch 1 by {difference:.2e}"
        for key in ("extra_prediction", "extra_stop_index", "extra_unet_evals"):
            np.testing.assert_array_equal(one[key], four[key])
        assert np.isfinite(one["score_l2"]).all() and (one["score_l2"] > 0).all()


def test_the_batch_tolerance_is_far_below_what_a_wiring_error_changes(runs, unet_dir, tmp_path):
    """Another crop sequence (what a sample keyed by its batch position would get) must not pass as rounding."""
    run_evaluate(_args(unet_dir, tmp_path, 4, cutout_seed=101))
    for name in ("id", "digits_5_9"):
        other, four = _scores(tmp_path, name), _scores(runs[4], name)
        for key in ("l2", "psnr", "logits_l1"):
            assert _largest_relative_difference(other[f"score_{key}"], four[f"score_{key}"]) > 10 * BATCH_RTOL, key


def test_stop_indices_vary_per_sample_and_plain_mode_guides_toward_the_prediction(runs):
    scores = [_scores(runs[4], name) for name in ("id", "digits_5_9")]
    stops = np.concatenate([r["extra_stop_index"] for r in scores])
    assert stops.min() >= 0 and stops.max() <= 7 and len(set(stops.tolist())) > 1
    for r in scores:
        np.testing.assert_array_equal(r["extra_target"], r["extra_prediction"])


def _scores_of(unet_dir, tmp_path, **model):
    run_evaluate(_args(unet_dir, tmp_path, 4, **model))
    return {name: _scores(tmp_path, name) for name in ("id", "digits_5_9")}


def test_unet_and_classifier_evaluations_match_the_reported_counts(unet_dir, tmp_path):
    """Count the UNet's and the classifier's image passes with hooks and compare with the per-sample accounting."""
    cli = make_cli(_args(unet_dir, tmp_path, 3) + ["--model.init_args.similarities", "[l2]"], description="t")
    model = cli.model
    counted = {"unet": 0, "classifier": 0}
    model.unet.register_forward_hook(lambda m, inp, out: counted.__setitem__("unet", counted["unet"] + len(inp[0])))
    model.classifier.register_forward_hook(
        lambda m, inp, out: counted.__setitem__("classifier", counted["classifier"] + len(inp[0])))
    cli.trainer.test(model, datamodule=cli.datamodule, verbose=False)
    reported = [_scores(tmp_path, name) for name in ("id", "digits_5_9")]
    assert counted["unet"] == sum(int(r["extra_unet_evals"].sum()) for r in reported)
    assert counted["classifier"] == sum(int(r["extra_classifier_evals"].sum()) for r in reported)
    stop = reported[0]["extra_stop_index"]
    steps = np.minimum(stop + 2, 9) + 1  # start at stop + 2 (capped at the last index), down to index 0
    np.testing.assert_array_equal(reported[0]["extra_unet_evals"], stop + 1 + 2 * steps)  # inversion + twin pair
    assert (tmp_path / "grids" / "id.png").is_file() and (tmp_path / "grids" / "digits_5_9.png").is_file()


def test_reference_input_skips_the_twin_and_bf16_runs(unet_dir, tmp_path):
    run_evaluate(_args(unet_dir, tmp_path, 4, reference="input") + ["--trainer.precision", "bf16-mixed"])
    scores = _scores(tmp_path, "id")
    assert np.isfinite(scores["score_l2"]).all()
    steps = np.minimum(scores["extra_stop_index"] + 2, 9) + 1
    np.testing.assert_array_equal(scores["extra_unet_evals"], scores["extra_stop_index"] + 1 + steps)


def test_oracle_guides_id_to_the_true_label_and_ood_to_a_seeded_random_label(unet_dir, tmp_path):
    scores = _scores_of(unet_dir, tmp_path, oracle=True, seed=3)
    np.testing.assert_array_equal(scores["id"]["extra_target"], scores["id"]["label"])
    ood = scores["digits_5_9"]
    seeds = [sample_seed(3, "digits_5_9/oracle", i) for i in ood["index"].tolist()]
    expected = [int(torch.randint(10, (), generator=torch.Generator().manual_seed(s))) for s in seeds]
    np.testing.assert_array_equal(ood["extra_target"], expected)


def test_oracle_refuses_an_in_distribution_set_without_labels(unet_dir, tmp_path):
    """Oracle mode guides in-distribution images toward their true label; without labels it would guide none of
    them and inflate the AUROC, so it stops and says what to change."""
    args = _args(unet_dir, tmp_path / "out", 4, oracle=True) + unlabelled_folders(tmp_path)
    with pytest.raises(ValueError, match=r"(?s)images without one .*one subfolder per class.*oracle false"):
        run_evaluate(args)


def test_inference_mode_is_refused_with_the_fix(unet_dir, tmp_path):
    args = _args(unet_dir, tmp_path, 4)
    args[args.index("--trainer.inference_mode") + 1] = "true"
    with pytest.raises(RuntimeError, match="inference_mode: false"):
        run_evaluate(args)


def test_missing_diffusion_model_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere/256x256_diffusion_uncond.pt"):
        DiffGuardGDM(diffusion_model=str(tmp_path / "nowhere/256x256_diffusion_uncond.pt"),
                     classifier="cifar_resnet20", classifier_weights=None, num_classes=10, stop_dists_similarity=None,
                     similarities=["l2"])


def test_dists_stop_rule_without_weights_fails_before_work(unet_dir):
    with pytest.raises((FileNotFoundError, ValueError), match="vgg16"):
        DiffGuardGDM(diffusion_model=str(unet_dir), classifier="cifar_resnet20", classifier_weights=None,
                     num_classes=10, similarities=["l2"])


def test_early_stop_rule_is_psnr_or_dists(unet_dir, tmp_path):
    """A latent close in PSNR but far in DISTS stops only when the DISTS rule is on; one far in PSNR always stops."""
    weights = write_piq_weight_files(tmp_path)
    common = {"diffusion_model": str(unet_dir), "classifier": "cifar_resnet20", "classifier_weights": None,
              "num_classes": 10, "similarities": ["l2"], "stop_psnr": 20.0, **weights}
    both = DiffGuardGDM(stop_dists_similarity=0.5, **common)
    psnr_only = DiffGuardGDM(stop_dists_similarity=None, **common)
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    near = image + 0.05 * torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # PSNR ~ 32 dB
    far = torch.zeros_like(image)
    rows = torch.arange(2)
    with torch.no_grad():
        similarity = dists_similarity_unclamped(both.stop_dists, near, image)
        both.hparams.stop_dists_similarity = float(1 + similarity.max()) / 2  # between `near` and identical images
        assert both.should_stop(image, image, rows).tolist() == [False, False]
        assert psnr_only.should_stop(near, image, rows).tolist() == [False, False]
        assert both.should_stop(near, image, rows).tolist() == [True, True]
        assert psnr_only.should_stop(far, image, rows).tolist() == [True, True]
        assert both.stop_dists is not None and psnr_only.stop_dists is None


def test_dists_stop_rule_shares_the_scoring_vgg16(unet_dir, tmp_path, monkeypatch):
    """The stop rule's DISTS is the scoring DISTS when that is on, and with LPIPS scoring alone it is built on the
    same read of the VGG16 file: 528 MB read once, one copy of the convolutions."""
    weights = write_piq_weight_files(tmp_path)
    common = {"diffusion_model": str(unet_dir), "classifier": "cifar_resnet20", "classifier_weights": None,
              "num_classes": 10, "stop_psnr": 20.0, "stop_dists_similarity": 0.5, **weights}
    reads = []
    real = similarity_module.load_checkpoint
    monkeypatch.setattr(similarity_module, "load_checkpoint",
                        lambda path, *a, **k: reads.append(str(path)) or real(path, *a, **k))
    lpips_scored = DiffGuardGDM(similarities=["lpips"], **common)
    assert reads.count(str(weights["vgg16_weights"])) == 1
    assert lpips_scored.stop_dists.dists.model[0].weight is lpips_scored.distances["lpips"].lpips.model[0].weight
    assert list(lpips_scored.distances) == ["lpips"]  # the stop rule's DISTS is not a score
    dists_scored = DiffGuardGDM(similarities=["dists", "l2"], **common)
    assert dists_scored.stop_dists is dists_scored.distances["dists"]


@pytest.fixture(scope="module")
def three_class_export(tmp_path_factory):
    """What configs/diffusion/ exports for 3 classes: a UNet with 4 class embeddings and diffguard.json (null class
    3, linear schedule 1e-4 -> 0.02 over 1000 steps)."""
    torch.manual_seed(0)
    model = ClassConditionalDiffusion(**{**TINY_UNET, "num_classes": 3})
    return model.export(tmp_path_factory.mktemp("three_classes") / "unet")


def _on_export(folder, **model):
    return DiffGuardGDM(diffusion_model=str(folder), classifier="cifar_resnet20", classifier_weights=None,
                        num_classes=3, num_steps=10, max_inversion_steps=5, stop_dists_similarity=None,
                        similarities=["l2"], cutouts=0, cutout_size=16, **model)


def test_the_null_class_comes_from_the_export(three_class_export):
    gdm = _on_export(three_class_export)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    t = torch.full((2,), gdm.inversion_table.timesteps[3])
    expected = gdm.unet(x, t, class_labels=torch.full((2,), 3)).sample
    torch.testing.assert_close(gdm.eps(x, 3, torch.arange(2)), expected, rtol=0, atol=0)


def test_a_null_class_contradicting_the_export_is_refused_before_any_work(three_class_export):
    with pytest.raises(ValueError) as error:
        _on_export(three_class_export, null_class=5)
    assert str(error.value) == (f"null_class is 5 in this config but 3 in {three_class_export}/diffguard.json, the "
                                "null class the model was trained with; leave null_class out (it is read from there)")
    assert _on_export(three_class_export, null_class=3).null_class == 3  # the same value is fine


def test_a_schedule_other_than_the_exports_is_refused(three_class_export):
    with pytest.raises(ValueError, match="beta_end is 0.012 here but 0.02 in training"):
        _on_export(three_class_export, beta_end=0.012)


def test_an_export_whose_null_class_is_not_the_last_embedding_is_refused(three_class_export, tmp_path):
    import json
    import shutil

    folder = shutil.copytree(three_class_export, tmp_path / "unet")
    info = json.loads((folder / "diffguard.json").read_text())
    (folder / "diffguard.json").write_text(json.dumps({**info, "null_class": 2}))
    with pytest.raises(ValueError, match="the UNet has 4 class embeddings but diffguard.json names class 2"):
        _on_export(folder)
