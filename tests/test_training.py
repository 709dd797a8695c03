"""Training DiffGuard's models: the class-conditional diffusion model and the classifier-under-protection, through
train.py and the shipped training configs, on scikit-learn's digits at 16 px with tiny networks."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from PIL import Image
from diffguard_helpers import evaluate_args, run_evaluate
from script_runs import TINY_UNET
from torch.utils.data import DataLoader

import train
from ood_lightning.classifiers import build_classifier
from ood_lightning.data.datamodule import OODDataModule
from ood_lightning.ddim import ddim_invert, ddim_sample
from ood_lightning.detectors.diffguard.gdm import DiffGuardGDM, load_pixel_unet
from ood_lightning.detectors.diffguard.ldm import DiffGuardLDM, compvis_tables, load_latent_model
from ood_lightning.detectors.diffguard.ldm.cam import GradCAMMask
from ood_lightning.detectors.diffguard.ldm.latent_models import PixelDiffusion
from ood_lightning.diffusion_export import EXPORT_INFO
from ood_lightning.io import load_checkpoint
from ood_lightning.training.classifier import ClassifierTraining
from ood_lightning.training.diffusion import ClassConditionalDiffusion

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DIGITS = {"benchmark": "digits", "image_size": 16, "batch_size": 16, "num_workers": 0}


def tiny_diffusion(**kwargs) -> ClassConditionalDiffusion:
    return ClassConditionalDiffusion(**{**TINY_UNET, **kwargs})


def tiny_trainer(root: Path, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=root, **kwargs)


def run_train_py(root: Path, config: str, model: dict, steps: int) -> Path:
    """train.py on a shipped config with digits as the data, `steps` optimizer steps of 2 batches per epoch and a
    CSV logger; returns the run folder."""
    cfg = yaml.safe_load((CONFIGS / config).read_text())
    cfg["trainer"].update(max_steps=steps, limit_train_batches=2, limit_val_batches=2, accelerator="cpu",
                          default_root_dir=str(root), enable_progress_bar=False, log_every_n_steps=1,
                          logger={"class_path": "lightning.pytorch.loggers.CSVLogger",
                                  "init_args": {"save_dir": str(root)}})
    for key in ("export_dir", "export_path"):  # the shipped paths are under runs/; here: the default, the run folder
        cfg["model"]["init_args"].pop(key, None)
    cfg["model"]["init_args"].update(model)
    cfg["data"] = DIGITS
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    train.main(["--config", str(path)])
    return root / "lightning_logs" / "version_0"


def csv_column(run: Path, key: str) -> list[float]:
    with open(run / "metrics.csv") as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


# -- the diffusion model -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory) -> Path:
    """The diffusion config through train.py: 4 steps over 2 epochs, a sample grid after each."""
    return run_train_py(tmp_path_factory.mktemp("diffusion"), "diffusion/mnist_0_4.yaml",
                        {**TINY_UNET, "sample_every_n_epochs": 1}, steps=4)


def test_train_py_exports_an_ema_unet_diffguard_loads(diffusion_run):
    run = diffusion_run
    assert not (run / "results.json").exists(), "train.py evaluates detectors only"
    unet = load_pixel_unet(str(run / "unet"))
    assert unet.config.num_class_embeds == 6 and unet.config.sample_size == 16
    info = json.loads((run / "unet" / EXPORT_INFO).read_text())
    assert info == {"null_class": 5, "num_classes": 5, "classes": ["0", "1", "2", "3", "4"], "image_size": 16,
                    "num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                    "prediction_type": "epsilon", "ema_updates": 4}
    state = load_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    for key, value in unet.state_dict().items():
        torch.testing.assert_close(value, state[f"ema.{key}"], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(state[f"ema.{k}"], state[f"unet.{k}"]) for k in unet.state_dict()), \
        "the export must be the EMA, not the raw weights"
    losses = csv_column(run, "train/loss_step")
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    val_losses = csv_column(run, "val/loss")  # the EMA's held-out loss, once per epoch
    assert len(val_losses) == 2 and all(torch.isfinite(torch.tensor(val_losses)))

    gdm = DiffGuardGDM(diffusion_model=str(run / "unet"), classifier="cifar_resnet20", classifier_weights=None,
                       num_classes=5, num_steps=10, max_inversion_steps=5, stop_dists_similarity=None,
                       similarities=["l2"], cutouts=0, cutout_size=16, null_class=info["null_class"])
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    expected = unet(x, torch.full((2,), gdm.inversion_table.timesteps[3]), class_labels=torch.full((2,), 5)).sample
    torch.testing.assert_close(gdm.eps(x, 3, torch.arange(2)), expected)


def test_the_export_is_the_pixel_back_end_of_the_classifier_free_path(diffusion_run, tmp_path):
    export = diffusion_run / "unet"
    model = load_latent_model(export)
    assert isinstance(model, PixelDiffusion) and model.null_class == 5 and model.num_classes == 5
    x = torch.rand(2, 3, 16, 16) * 2.4 - 1.2
    assert model.encode(x) is x and model.decode(x).abs().max() <= 1.0
    torch.testing.assert_close(model.decode(x.clamp(-1, 1)), x.clamp(-1, 1))
    labels = torch.tensor([5, 2])
    unet = load_pixel_unet(str(export))
    torch.testing.assert_close(model.eps(x, 41, labels),
                               unet(x, torch.full((2,), 41), class_labels=labels).sample)
    assert not torch.allclose(model.eps(x, 41, labels), model.eps(x, 41, torch.tensor([5, 3])))

    common = dict(diffusion_model=str(export), classifier="cifar_resnet20", classifier_weights=None, num_classes=5,
                  image_size=16, similarities=["l2"])
    with pytest.raises(ValueError, match="beta_schedule is 'scaled_linear' here but 'linear' in training"):
        DiffGuardLDM(**common)  # the released LDM schedule, not the one this model was trained with

    # a classifier file, so the evaluation and the computation below use the same classifier
    torch.manual_seed(0)
    classifier_file = tmp_path / "classifier.pt"
    torch.save(build_classifier("cifar_resnet20", None, num_classes=5).net.state_dict(), classifier_file)
    init = {**common, "classifier_weights": str(classifier_file), "beta_schedule": "linear", "beta_start": 1e-4,
            "beta_end": 0.02, "num_steps": 10, "similarities": ["logits_l1"], "grid_images": 4}
    run_evaluate(evaluate_args("ood_lightning.detectors.diffguard.ldm.DiffGuardLDM", init, tmp_path, 4, 6)
                 + ["--results_dir", str(tmp_path)])
    for name in ("id", "digits_5_9"):
        with np.load(tmp_path / "scores" / f"{name}.npz") as scores:
            assert len(scores["index"]) == 6 and np.isfinite(scores["score_logits_l1"]).all()
            assert ((scores["extra_cam_area"] > 0) & (scores["extra_cam_area"] <= 1)).all()
        assert (tmp_path / "grids" / f"{name}.png").is_file()

    # the ID scores are the definition on the pixel back-end: images in [0, 1] -> [-1, 1] pixels, null-class (5)
    # DDIM inversion, re-synthesis guided toward the prediction inside its Grad-CAM mask (cut 0.3) at scale 10, back to
    # [0, 1], and the L1 distance between the classifier's logits of input and synthesis
    dm = OODDataModule(**{**DIGITS, "eval_subset": 6})
    dm.setup("test")
    images = torch.stack([dm.test_sets["id"][i]["image"] for i in range(6)]).float()
    classifier = build_classifier("cifar_resnet20", str(classifier_file))
    inversion, resynthesis = compvis_tables(10, "linear", 1e-4, 0.02)
    with torch.no_grad():
        target = classifier(images).argmax(-1)
        latents = ddim_invert(model.eps, images * 2 - 1, inversion, torch.full_like(target, 5))
    mask = GradCAMMask(classifier, 0.3)(images, target, (16, 16))
    with torch.no_grad():
        synthesis = (ddim_sample(model.eps, latents, resynthesis, target, 5, 10.0, mask).clamp(-1, 1) + 1) / 2
        expected = (classifier(synthesis) - classifier(images)).abs().sum(1)
    with np.load(tmp_path / "scores" / "id.npz") as scores:
        np.testing.assert_array_equal(scores["index"], np.arange(6))
        np.testing.assert_array_equal(scores["extra_prediction"], target.numpy())
        np.testing.assert_allclose(scores["extra_cam_area"], mask.float().mean((1, 2, 3)).numpy(), rtol=1e-6)
        np.testing.assert_allclose(scores["score_logits_l1"], expected.numpy(), rtol=1e-3, atol=1e-4)


def test_sample_grids_are_written_per_epoch(diffusion_run):
    grids = sorted(p.name for p in (diffusion_run / "samples").iterdir())
    assert grids == ["epoch_000.png", "epoch_001.png"]
    with Image.open(diffusion_run / "samples" / "epoch_001.png") as grid:
        # make_grid: 2 columns, 5 class rows + 1 unconditional row, 16 px tiles with 2 px padding
        assert grid.size == (2 * 18 + 2, 6 * 18 + 2)


def test_sample_grid_is_deterministic():
    torch.manual_seed(0)
    model = tiny_diffusion(seed=3)
    first, again = model.sample_grid(), model.sample_grid()
    assert first.shape == (12, 3, 16, 16) and 0 <= first.min() and first.max() <= 1
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, tiny_diffusion(seed=4).sample_grid())


def test_ema_update_follows_the_decay_formula():
    model = tiny_diffusion(ema_decay=0.9)
    before = [p.clone() for p in model.ema.parameters()]
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(torch.randn_like(p))
    weights = [p.clone() for p in model.unet.parameters()]
    assert model.update_ema() == pytest.approx(2 / 11)  # warm-up: min(0.9, (1 + n) / (10 + n)) at n = 1
    for e, b, w in zip(model.ema.parameters(), before, weights):
        torch.testing.assert_close(e, 2 / 11 * b + 9 / 11 * w)
    for _ in range(200):
        model.update_ema()
    previous = [p.clone() for p in model.ema.parameters()]
    assert model.update_ema() == pytest.approx(0.9)  # the ceiling once (1 + n) / (10 + n) exceeds it
    for e, b, w in zip(model.ema.parameters(), previous, weights):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * w)


def test_label_dropout_rate_is_honoured():
    model = tiny_diffusion(label_dropout=0.15)
    labels = torch.arange(5).repeat(20_000)
    dropped = model.drop_labels(labels, generator=torch.Generator().manual_seed(0))
    null = dropped == 5
    assert abs(null.float().mean().item() - 0.15) < 0.005
    assert torch.equal(dropped[~null], labels[~null]), "kept labels must be unchanged"
    assert (tiny_diffusion(label_dropout=0.0).drop_labels(labels) == labels).all()
    assert (tiny_diffusion(label_dropout=1.0).drop_labels(labels) == 5).all()
    assert (model.drop_labels(torch.full((100,), -1)) == 5).all(), "unlabelled images train the null class"


def test_loss_decreases_on_a_fixed_batch(tmp_path):
    torch.manual_seed(0)
    dm = OODDataModule(**DIGITS)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    model = tiny_diffusion(lr=3e-3, sample_every_n_epochs=0)
    probe = (batch["image"] * 2 - 1, batch["label"], torch.randn_like(batch["image"]),
             torch.linspace(50, 950, len(batch["label"])).long())

    def probe_loss() -> float:
        with torch.no_grad():
            return model.diffusion_loss(model.unet, *probe).item()

    start = probe_loss()
    same_batch = DataLoader([batch] * 30, batch_size=None)
    tiny_trainer(tmp_path, max_steps=30, limit_val_batches=0).fit(model, train_dataloaders=same_batch)
    assert probe_loss() < 0.7 * start


def test_nan_loss_stops_with_the_step():
    model = tiny_diffusion()
    model.log = lambda *a, **k: None
    batch = {"image": torch.full((2, 3, 16, 16), float("nan")), "label": torch.zeros(2, dtype=torch.long),
             "index": torch.arange(2)}
    with pytest.raises(FloatingPointError, match="global step 0"):
        model.training_step(batch, 0)


def test_wrong_class_count_or_image_size_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="num_classes is 7"):
        tiny_trainer(tmp_path, max_steps=1).fit(tiny_diffusion(num_classes=7), datamodule=OODDataModule(**DIGITS))
    small_images = OODDataModule(**{**DIGITS, "image_size": 12})
    with pytest.raises(ValueError, match="data.image_size to 16"):
        tiny_trainer(tmp_path, max_steps=1).fit(tiny_diffusion(), datamodule=small_images)


class _RecordEMAAtStart(Callback):
    def on_train_start(self, trainer, module) -> None:
        self.ema = {k: v.clone() for k, v in module.ema.state_dict().items()}
        self.updates = int(module.ema_updates)


def test_resume_from_last_ckpt_restores_the_ema(tmp_path):
    torch.manual_seed(0)
    tiny_trainer(tmp_path, max_steps=3, limit_train_batches=3).fit(
        tiny_diffusion(sample_every_n_epochs=0, export_dir=str(tmp_path / "first")), datamodule=OODDataModule(**DIGITS))
    last = tmp_path / "checkpoints" / "last.ckpt"
    saved = load_checkpoint(last)["state_dict"]

    torch.manual_seed(1)  # a different initialisation, which the checkpoint must replace
    resumed, record = tiny_diffusion(sample_every_n_epochs=0, export_dir=str(tmp_path / "second")), _RecordEMAAtStart()
    tiny_trainer(tmp_path, max_steps=5, limit_train_batches=3, callbacks=[record]).fit(
        resumed, datamodule=OODDataModule(**DIGITS), ckpt_path=str(last))
    assert record.updates == 3
    for key, value in record.ema.items():
        torch.testing.assert_close(value, saved[f"ema.{key}"], rtol=0, atol=0, msg=key)
    assert int(resumed.ema_updates) == 5
    assert json.loads((tmp_path / "second" / EXPORT_INFO).read_text())["ema_updates"] == 5


# -- the classifier ----------------------------------------------------------------------------------------------
def test_train_py_trains_a_classifier_that_build_classifier_loads(tmp_path):
    run = run_train_py(tmp_path, "classifier/mnist_0_4.yaml", {"crop_padding": 2, "horizontal_flip": True}, steps=3)
    export = run / "classifier.pt"
    loaded = build_classifier("cifar_resnet20", weights=str(export))  # strict: every key, every shape
    assert loaded.num_classes == 5

    module = ClassifierTraining.load_from_checkpoint(run / "checkpoints" / "last.ckpt").eval()
    dm = OODDataModule(**DIGITS)
    dm.setup("test")
    images = next(iter(dm.loader(dm.test_sets["id"])))["image"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), module(images))
    assert len(csv_column(run, "train/loss_step")) == 3
    accuracies = csv_column(run, "val/acc")
    assert accuracies and all(0 <= acc <= 1 for acc in accuracies)


def test_classifier_checks_the_class_count(tmp_path):
    with pytest.raises(ValueError, match="num_classes is 10"):
        tiny_trainer(tmp_path, max_steps=1).fit(ClassifierTraining(num_classes=10), datamodule=OODDataModule(**DIGITS))


def _train_only_folders(root: Path, classes: int, per_class: int = 4) -> Path:
    """An ImageFolder of random 16 px images: in-distribution train images and nothing else."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / str(c)).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / str(c) / f"{i}.png")
    return root


@pytest.mark.parametrize("model", ["classifier", "diffusion"])
def test_training_on_folders_with_train_images_only(tmp_path, model):
    """Your own data may be in-distribution train images alone: the training configs train without validating."""
    train = _train_only_folders(tmp_path / "train", classes=3)
    dm = OODDataModule(benchmark="folders", root=None, id_train=str(train), image_size=16, batch_size=4,
                       num_workers=0)
    module = ClassifierTraining(num_classes=3) if model == "classifier" else tiny_diffusion(num_classes=3)
    trainer = tiny_trainer(tmp_path, max_steps=2)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2
    assert not [name for name in trainer.callback_metrics if name.startswith("val/")]  # nothing to validate on
