"""LFDN on real images, offline, on CPU: CIFAR-10 JPEGs in distribution, Tiny-ImageNet (near) and MNIST (far) OOD.

    python benchmarks/lfdn_cifar10_jpeg.py                      # extracts ../shared/data into data/ if needed
    python benchmarks/lfdn_cifar10_jpeg.py --train 10000 --eval 2000 --epochs 30 --image-size 128

Prints and writes (benchmarks/results/lfdn_cifar10_jpeg.md):
- AUROC / FPR95 of MSE, MFsim and LR for the network after its first epoch and for the trained one, with a
  k-nearest-neighbour distance on the same normalised features as a reference row;
- scoring throughput (images/s, the whole evaluation from image files: backbone + 6 LFDN passes) against
  backbone-only feature extraction on the same images;
- the time of a training epoch on cached features against one that must run the backbone (no cache).
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from ood_lightning.backbones import MultiLayerFeatures, group_zscore
from ood_lightning.data.datamodule import OODDataModule
from ood_lightning.detectors.lfdn import LFDNDetector
from ood_lightning.detectors.lfdn.feature_cache import extract
from ood_lightning.metrics import ood_metrics
from ood_lightning.io import atomic_write_text

from common import REPO, ensure_extracted


def knn_scores(train: torch.Tensor, test: torch.Tensor, k: int) -> np.ndarray:
    """Distance to the k-th nearest training feature (L2 on the z-scored, L2-normalised vectors)."""
    train = torch.nn.functional.normalize(train, dim=1)
    test = torch.nn.functional.normalize(test, dim=1)
    return torch.cdist(test, train).topk(k, largest=False).values[:, -1].numpy()


def time_uncached_epoch(model: LFDNDetector, dm: OODDataModule, images, max_batches: int) -> float:
    """Seconds per training epoch when every batch has to go through the backbone (what the cache avoids).

    Timed over `max_batches` batches of images and scaled to the epoch's batch count.
    """
    loader = dm.loader(images, sampler=dm.training_order(images))
    net = copy.deepcopy(model.net)  # leave the trained weights alone
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    start, n = time.perf_counter(), 0
    for batch in loader:
        z = group_zscore(model.backbone(batch["image"]), model.group_sizes)
        t, noise = model.training_noise(batch["index"], z)
        loss = model.schedule.training_loss(net, z, t, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        n += 1
        if n == max_batches:
            break
    return (time.perf_counter() - start) / n * len(loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO / "data", help="where the archives are (or get) extracted")
    parser.add_argument("--train", type=int, default=10000, help="CIFAR-10 training images (seeded subset)")
    parser.add_argument("--eval", type=int, default=2000, help="images per test set (seeded subset)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--knn-k", type=int, default=50)
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "benchmark_lfdn")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "lfdn_cifar10_jpeg.md")
    args = parser.parse_args()

    ensure_extracted(args.root)
    shutil.rmtree(args.workdir, ignore_errors=True)  # cold caches: every number below is measured in this run
    L.seed_everything(0)
    dm = OODDataModule(
        "cifar10_jpeg", root=str(args.root), image_size=args.image_size, batch_size=args.batch_size,
        num_workers=2, train_subset=args.train, eval_subset=args.eval,
    )
    dm.setup("fit")
    train_images = dm.train_set
    backbone = MultiLayerFeatures("tf_efficientnet_lite0", weights="package")
    model = LFDNDetector(
        backbone, hidden_dim=args.hidden, num_blocks=args.blocks, lr=args.lr,
        cache_dir=str(args.workdir / "features"), results_dir=str(args.workdir / "results"),
    )
    warm = next(iter(dm.loader(dm.test_sets["id"])))["image"]
    backbone(warm)  # first CPU forward at a new shape pays a one-off warm-up

    # 1. backbone-only extraction of the test images (no cache involved)
    start = time.perf_counter()
    test_features = {
        name: extract(backbone, dm.loader(ds), torch.device("cpu"), f"backbone only: {name}", quiet=False)
        for name, ds in dm.test_sets.items()
    }
    extract_s = time.perf_counter() - start
    n_test = sum(len(f["index"]) for f in test_features.values())

    # 2. training on cached features (the cache is built at fit start; timed separately from the epochs)
    epoch_times = []

    class EpochTimer(L.Callback):
        def on_train_epoch_start(self, *_):
            self.t = time.perf_counter()

        def on_train_epoch_end(self, *_):
            epoch_times.append(time.perf_counter() - self.t)

    trainer = L.Trainer(
        accelerator="cpu", max_epochs=args.epochs, logger=False, enable_checkpointing=False,
        default_root_dir=args.workdir, callbacks=[EpochTimer()],
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    fit_s = time.perf_counter() - start
    cached_epoch_s = float(np.median(epoch_times))
    uncached_epoch_s = time_uncached_epoch(model, dm, train_images, max_batches=10)

    # 3. the whole evaluation from image files with a cold test cache: backbone + LFDN scoring
    start = time.perf_counter()
    trainer.test(model, datamodule=dm, verbose=False)
    score_s = time.perf_counter() - start

    # 4. k-NN reference row on the same z-scored features
    train_z = group_zscore(dm.train_set.features, model.group_sizes)
    knn = {
        name: knn_scores(train_z, group_zscore(f["features"], model.group_sizes), args.knn_k)
        for name, f in test_features.items()
    }
    rows = []
    for ood in ("tin", "mnist"):
        for score in ("mse", "mfsim", "lr_mse", "lr_mfsim", "mse_epoch0", "mfsim_epoch0"):
            m = model.results["scores"][score][ood]
            rows.append((ood, score, m["auroc"], m["fpr95"], m["fpr95_openood"]))
        m = ood_metrics(knn["id"], knn[ood])
        rows.append((ood, f"knn (k={args.knn_k})", m["auroc"], m["fpr95"], m["fpr95_openood"]))

    lines = [
        f"LFDN (Lite0 {args.image_size} px, width {args.hidden} x {args.blocks} blocks, {args.epochs} epochs, "
        f"lr {args.lr}) trained on {len(dm.train_set)} CIFAR-10 JPEGs; {args.eval} images per test set.",
        "",
        "| OOD set | score | AUROC | FPR95 (ID 95%) | FPR95 (OpenOOD) |",
        "|---|---|---|---|---|",
        *[f"| {o} | {s} | {100 * a:.2f} | {100 * f:.2f} | {100 * g:.2f} |" for o, s, a, f, g in rows],
        "",
        "| speed (2 CPU cores) | value |",
        "|---|---|",
        f"| backbone-only feature extraction | {n_test / extract_s:.1f} images/s |",
        f"| scoring from image files (backbone + LFDN, MSE/MFsim/LR) | {n_test / score_s:.1f} images/s "
        f"({extract_s / score_s:.2f}x) |",
        f"| training epoch, cached features | {cached_epoch_s:.2f} s |",
        f"| training epoch, backbone every batch (no cache) | {uncached_epoch_s:.1f} s "
        f"({uncached_epoch_s / cached_epoch_s:.0f}x slower) |",
        f"| whole fit incl. building the train feature cache | {fit_s:.0f} s |",
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    atomic_write_text(args.out, text)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(model.results, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
