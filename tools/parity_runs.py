r"""Tiny end-to-end runs whose outputs must not change when the code is restructured, and their comparison.

Five runs through the entry points on the offline digits benchmark (16-32 px, CPU, one thread, no logger): an LFDN
trained for 3 epochs by train.py, then DiffGuard GDM, DiffGuard LDM, the classifier baselines (msp, mls, ebo, knn,
vim) and a cascade fusion (mls + GDM's logits_l1) scored by evaluate.py, on tiny random-initialised models saved
once into the output folder's `models/`. Each run's results.json and scores/*.npz are kept.

    python tools/parity_runs.py run OUT            # the five runs into OUT/<run>/ (about 3 minutes on 2 cores)
    python tools/parity_runs.py compare OLD NEW    # every results.json value and every npz array, exactly

`compare` ignores what says when and where a run happened (wall time, seconds per part, images/s, checkpoint path,
rescored_from) and reports config_hash changes apart: the hash identifies the config's wording, which a restructure
may change.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's ood_lightning, also from a git worktree
RUNS = ("lfdn", "gdm", "ldm", "baselines", "fusion")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
       "PYTHONPATH": str(REPO)}
IGNORED = {"wall_time_s", "images_per_s", "checkpoint", "rescored_from", "config_hash"}


def _models(out: Path) -> dict[str, str]:
    """A tiny pixel UNet (GDM) and a tiny VQ latent diffusion model (LDM), random weights of seed 0, saved once."""
    import torch
    from diffusers import UNet2DConditionModel, UNet2DModel, VQModel
    from torch import nn

    try:
        from ood_lightning.detectors.diffguard.ldm import LatentDiffusionParts, save_ldm_parts
    except ImportError:  # before the gdm/ldm folders
        from ood_lightning.detectors.diffguard.ldm_checkpoint import LatentDiffusionParts, save_ldm_parts
    unet, ldm = out / "models" / "unet", out / "models" / "ldm"
    if not unet.exists():
        torch.manual_seed(0)
        UNet2DModel(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                    attention_head_dim=8).save_pretrained(unet)
    if not ldm.exists():
        torch.manual_seed(0)
        vae = VQModel(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                      up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                      latent_channels=3, num_vq_embeddings=32, vq_embed_dim=3, norm_num_groups=4, sample_size=16)
        net = UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                   layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                   up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=8,
                                   norm_num_groups=4, attention_head_dim=1, flip_sin_to_cos=True, freq_shift=0)
        save_ldm_parts(LatentDiffusionParts(vae.eval(), net.eval(), nn.Embedding(11, 8), 10), ldm)
    return {"unet": str(unet), "ldm": str(ldm)}


def _configs(models: dict[str, str]) -> dict[str, tuple[str, dict]]:
    """(entry point, config) per run."""
    classifier = {"classifier": "cifar_resnet20", "classifier_weights": None, "num_classes": 10}
    gdm = {"class_path": "ood_lightning.detectors.diffguard.gdm.DiffGuardGDM", "init_args": {
        "diffusion_model": models["unet"], **classifier, "num_steps": 8, "max_inversion_steps": 6, "stop_psnr": 14.0,
        "stop_dists_similarity": None, "cutouts": 2, "cutout_size": 12,
        "similarities": ["l2", "psnr", "logits_l1"], "grid_images": 2}}
    ldm = {"class_path": "ood_lightning.detectors.diffguard.ldm.DiffGuardLDM", "init_args": {
        "diffusion_model": models["ldm"], **classifier, "image_size": 16, "num_steps": 8,
        "similarities": ["l2", "psnr", "logits_l1"], "grid_images": 2}}
    baselines = {"class_path": "ood_lightning.detectors.baselines.ClassifierBaselines", "init_args": {
        **classifier, "scores": ["msp", "mls", "ebo", "knn", "vim"], "knn_k": 3, "vim_dim": 8}}
    fusion = {"class_path": "ood_lightning.detectors.fusion.CascadeFusion", "init_args": {
        "baseline": {**baselines, "init_args": {**baselines["init_args"], "scores": ["mls"]}}, "refiner": gdm,
        "baseline_score": "mls", "refiner_score": "logits_l1", "quantiles": [0.2, 0.8], "validation_size": 20}}
    lfdn = {"class_path": "ood_lightning.detectors.lfdn.LFDNDetector", "init_args": {
        "backbone": {"class_path": "ood_lightning.backbones.MultiLayerFeatures",
                     "init_args": {"model_name": "tf_efficientnet_lite0", "weights": "package"}},
        "hidden_dim": 64, "num_blocks": 2, "lr": 1e-3}}
    small = {"benchmark": "digits", "image_size": 16, "eval_subset": 8, "train_subset": 40, "batch_size": 4}
    return {
        "lfdn": ("train.py", {"model": lfdn, "trainer": {"max_epochs": 3},
                              "data": {"benchmark": "digits", "image_size": 32, "eval_subset": 60,
                                       "train_subset": 200, "batch_size": 32}}),
        "gdm": ("evaluate.py", {"model": gdm, "data": small, "trainer": {"inference_mode": False}}),
        "ldm": ("evaluate.py", {"model": ldm, "data": small, "trainer": {"inference_mode": False}}),
        "baselines": ("evaluate.py", {"model": baselines, "data": small}),
        "fusion": ("evaluate.py", {"model": fusion, "data": small, "trainer": {"inference_mode": False}}),
    }


def run(out: Path, only: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, (script, config) in _configs(_models(out)).items():
        if only and name not in only:
            continue
        folder = out / name
        config = {"seed_everything": 0, **config, "plots": False,
                  "trainer": {"accelerator": "cpu", "default_root_dir": str(folder), "logger": False,
                              "enable_progress_bar": False, **config.get("trainer", {})}}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "parity_config.yaml").write_text(yaml.safe_dump(config))
        print(f"{name}: {script} --config {folder / 'parity_config.yaml'}", flush=True)
        subprocess.run([sys.executable, str(REPO / script), "--config", str(folder / "parity_config.yaml")],
                       cwd=folder, env=ENV, check=True, stdout=subprocess.DEVNULL)


def _results_folder(root: Path) -> Path:
    found = sorted(root.rglob("results.json"))
    if len(found) != 1:
        raise SystemExit(f"{root}: expected one results.json, found {[str(p) for p in found]}")
    return found[0].parent


def _timing_or_place(key: str) -> bool:
    """A results.json key that says when or where a run happened: wall times, per-part seconds (the cascade's
    cost block, PostHocDetector's timings), images/s, paths."""
    return key in IGNORED or key == "seconds" or key.endswith("_seconds")


def _json_differences(old, new, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in dict.fromkeys([*old, *new]) if not _timing_or_place(k)]
        return [d for k in keys for d in _json_differences(old.get(k, "<absent>"), new.get(k, "<absent>"),
                                                            f"{path}.{k}")]
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def compare(old_root: Path, new_root: Path) -> int:
    problems = 0
    for name in RUNS:
        if not (old_root / name).is_dir():
            continue
        old, new = _results_folder(old_root / name), _results_folder(new_root / name)
        old_json, new_json = (json.loads((d / "results.json").read_text()) for d in (old, new))
        lines = _json_differences(old_json, new_json)
        old_files = sorted(p.name for p in (old / "scores").glob("*.npz"))
        new_files = sorted(p.name for p in (new / "scores").glob("*.npz"))
        if old_files != new_files:
            lines.append(f"score files {old_files} -> {new_files}")
        arrays = 0
        for file in set(old_files) & set(new_files):
            with np.load(old / "scores" / file) as a, np.load(new / "scores" / file) as b:
                if sorted(a.files) != sorted(b.files):
                    lines.append(f"{file}: arrays {sorted(a.files)} -> {sorted(b.files)}")
                for key in set(a.files) & set(b.files):
                    arrays += 1
                    if a[key].shape != b[key].shape or not np.array_equal(a[key], b[key]):
                        lines.append(f"{file}[{key}] differs")
        hashes = (old_json.get("config_hash"), new_json.get("config_hash"))
        note = "" if hashes[0] == hashes[1] else f" (config_hash {hashes[0]} -> {hashes[1]})"
        status = "identical" if not lines else f"{len(lines)} difference(s)"
        print(f"{name}: results.json and {arrays} arrays in {len(new_files)} score files: {status}{note}")
        for line in lines:
            print(f"  {line}")
        problems += len(lines)
    return 1 if problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="the five tiny runs into OUT/<run>/")
    run_parser.add_argument("out", type=Path)
    run_parser.add_argument("--only", nargs="*", default=[], choices=RUNS)
    compare_parser = sub.add_parser("compare", help="exact comparison of two `run` folders")
    compare_parser.add_argument("old", type=Path)
    compare_parser.add_argument("new", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        run(args.out.resolve(), args.only)
    else:
        raise SystemExit(compare(args.old, args.new))


if __name__ == "__main__":
    main()
