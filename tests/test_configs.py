"""Every shipped config parses against the current signatures (a renamed argument breaks here, not in a user's run),
and the configs (and detector defaults) that reproduce published results hold the released values."""
import importlib
import inspect
import math
import sys
from pathlib import Path

import pytest
import yaml

from ood_lightning.backbones import MultiLayerFeatures
from ood_lightning.cli import make_cli

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))


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


# ------------------------------------------------------------------------------------------ released values
# The numbers the published results were computed with (docs/lfdn.md: Schedule and reconstruction, Scores;
# docs/diffguard.md: Released settings). A config or a default that drifts from them silently changes every result.
PSNR_48_5 = 48.5 - 20 * math.log10(127.5)  # the reference's 255-peak PSNR on [-1, 1] tensors, in standard dB: 6.39
LFDN_REFERENCE = {  # scoring and training arithmetic of the released LFDN code
    "num_timesteps": 100, "beta_start": 0.0015, "beta_end": 0.0195, "start_index": 3, "eta": 1.0,
    "reconstruction": "reference", "mfsim_skip_first_group": True, "ema_decay": 0.9999, "weight_decay": 0.02,
    "num_blocks": 16, "dropout": 0.0,
}
B4_PAPER = {"hidden_dim": 1440, "time_embed_dim": 720}  # model_channels 1440, time_embed_dim 720 for 720-d features
B4_BACKBONE = {"model_name": "tf_efficientnet_b4", "weights_format": "lukemelas", "static_same_padding": 380,
               "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
RELEASED = {
    "lfdn/cifar10.yaml": ({**LFDN_REFERENCE, **B4_PAPER, "lr": 1e-4}, B4_BACKBONE,
                          {"image_size": 224, "batch_size": 128}, {"max_epochs": 150}),
    "lfdn/cifar100.yaml": ({**LFDN_REFERENCE, **B4_PAPER, "lr": 1e-4}, B4_BACKBONE,
                           {"image_size": 224, "batch_size": 128}, {"max_epochs": 150}),
    "lfdn/celeba.yaml": ({**LFDN_REFERENCE, **B4_PAPER, "lr": 1e-4}, B4_BACKBONE,
                         {"image_size": 224, "batch_size": 128}, {"max_epochs": 150}),
    "lfdn/cifar10_released.yaml": ({**LFDN_REFERENCE, **B4_PAPER, "lr": 1e-5}, B4_BACKBONE,
                                   {"image_size": 224, "batch_size": 256}, {"max_epochs": 150}),
    "lfdn/cifar10_resnet50.yaml": ({**LFDN_REFERENCE, "lr": 1e-4}, {"model_name": "resnet50"},
                                   {"image_size": 224, "batch_size": 128}, {"max_epochs": 150}),
    # exp6.1: ddim100, at most 100 - 10 inversion steps, stop at PSNR 48.5 (255-peak) or 1 - DISTS 0.38,
    # forback_skip_diff 3 (re-synthesis from stop + 2 = stop + 1 + offset 1), scale 3, 8 cutouts of 224 px with
    # seed 100, Clean Grad, clip_denoised, compared with the unguided twin (uncond_aux) by DISTS
    "diffguard/imagenet_gdm.yaml": ({
        "num_steps": 100, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
        "num_train_timesteps": 1000, "max_inversion_steps": 90, "stop_psnr": PSNR_48_5,
        "stop_dists_similarity": 0.38, "resynthesis_offset": 1, "clip_denoised": True, "guidance_scale": 3.0,
        "cutouts": 8, "cutout_size": 224, "cutout_seed": 100, "clean_x0": True, "reference": "unguided",
        "similarities": ["dists"], "adm_num_head_channels": 64, "oracle": False, "classifier": "resnet50"},
        None, {"image_size": 256, "center_crop": 224}, {"inference_mode": False}),
    # ldm-exp2.25: 25 DDIM steps on [1, 41, ..., 961] of the 0.0015 -> 0.0195 scaled-linear schedule, guidance
    # scale 10 inside the Grad-CAM mask cut at 0.3 (not the paper's 0.2), 256 px input, DISTS against the input
    "diffguard/imagenet_ldm.yaml": ({
        "num_steps": 25, "beta_schedule": "scaled_linear", "beta_start": 0.0015, "beta_end": 0.0195,
        "num_train_timesteps": 1000, "steps_offset": 1, "set_alpha_to_one": False, "guidance_scale": 10.0,
        "use_cam": True, "cam_cut": 0.3, "reference": "input", "similarities": ["dists"], "image_size": 256,
        "oracle": False, "classifier": "resnet50"},
        None, {"image_size": 256, "center_crop": 256}, {"inference_mode": False}),
}


def resolved_config(path: Path, capsys) -> dict:
    """The config as train.py / evaluate.py would run it: the file plus every default, from --print_config."""
    with pytest.raises(SystemExit):
        make_cli(["--config", str(path), "--print_config"], description="test")
    return yaml.safe_load(capsys.readouterr().out)


def _check(section: dict, expected: dict, where: str) -> None:
    for key, value in expected.items():
        assert key in section, f"{where}: {key} missing"
        got = section[key]
        if isinstance(value, float):
            assert got == pytest.approx(value, abs=5e-3 if key == "stop_psnr" else 1e-12), f"{where}.{key}"
        else:
            assert got == value, f"{where}.{key}: {got!r}, released {value!r}"


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_configs_hold_the_released_values(name, capsys):
    model, backbone, data, trainer = RELEASED[name]
    config = resolved_config(CONFIG_DIR / name, capsys)
    init = config["model"]["init_args"]
    _check(init, model, f"{name} model")
    if backbone is not None:
        _check(init["backbone"]["init_args"], backbone, f"{name} backbone")
    _check(config["data"], data, f"{name} data")
    _check(config["trainer"], trainer, f"{name} trainer")


@pytest.mark.parametrize("detector", ["ood_lightning.detectors.lfdn.LFDNDetector",
                                      "ood_lightning.detectors.diffguard.gdm.DiffGuardGDM",
                                      "ood_lightning.detectors.diffguard.ldm.DiffGuardLDM"])
def test_detector_defaults_are_the_released_values(detector):
    """A config that leaves a key out gets the default: the defaults must reproduce the released code too."""
    module, name = detector.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()
                if p.default is not inspect.Parameter.empty}
    released = {"LFDNDetector": LFDN_REFERENCE,
                "DiffGuardGDM": RELEASED["diffguard/imagenet_gdm.yaml"][0],
                "DiffGuardLDM": RELEASED["diffguard/imagenet_ldm.yaml"][0]}[name]
    _check(defaults, {k: v for k, v in released.items() if k in defaults}, f"{name} defaults")


def test_cpu_benchmark_defaults_are_the_cpu_config():
    """benchmarks/lfdn_cifar10_jpeg.py measures configs/lfdn/cifar10_jpeg.yaml: their defaults must not drift apart
    (both are set from the settings study's winners)."""
    sys.path.insert(0, str(CONFIG_DIR.parent / "benchmarks"))
    import lfdn_cifar10_jpeg  # a script folder, not a package

    args = lfdn_cifar10_jpeg.build_parser().parse_args([])
    config = yaml.safe_load((CONFIG_DIR / "lfdn" / "cifar10_jpeg.yaml").read_text())
    model, data = config["model"]["init_args"], config["data"]
    backbone = model["backbone"]["init_args"]
    defaults = inspect.signature(MultiLayerFeatures).parameters
    assert args.backbone == backbone["model_name"]
    assert args.neck_stride == backbone.get("neck_stride", defaults["neck_stride"].default)
    assert args.taps == backbone.get("out_indices", defaults["out_indices"].default)
    assert (args.image_size, args.train, args.eval, args.batch_size) == (
        data["image_size"], data["train_subset"], data["eval_subset"], data["batch_size"])
    assert (args.hidden, args.blocks, args.lr, args.epochs) == (
        model["hidden_dim"], model["num_blocks"], model["lr"], config["trainer"]["max_epochs"])
