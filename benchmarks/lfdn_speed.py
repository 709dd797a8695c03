"""Where LFDN's CPU time goes, at the paper's backbone cost and in the training step itself.

    python benchmarks/lfdn_speed.py                      # both measurements; run it on a quiet machine
    python benchmarks/lfdn_speed.py --rounds 2 --step-batches 2 --train 512 --batch-size 32 --out /tmp/s.md  # check

1. Cached against uncached LFDN training epoch with EfficientNet-B4 at 224 px, the paper's backbone and size
   (configs/lfdn/cifar10.yaml: static 380 px padding, the 1440 x 16 LFDN), in one run on the CIFAR-10 JPEGs. The
   B4 gets random initial weights: its cost does not depend on them, and no ImageNet B4 file loads offline.
2. The LFDN training step of the CPU-sized network (768 x 6 on Lite0 features, where the settings study began) and
   of the paper's network: its achieved GFLOP/s (forward and backward FLOPs counted by torch's FlopCounterMode, over the
   median step time; AdamW's element-wise update counted as no FLOPs) against the matrix products of the same
   step, recorded shape for shape and replayed as plain torch.mm calls: the ceiling these cores reach on them.
Every figure: warmed up, the compared paths timed in turn, median of --rounds rounds (benchmarks/lfdn_timing.py).
Writes benchmarks/results/lfdn_speed.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from ood_lightning.backbones import MultiLayerFeatures
from ood_lightning.data.datamodule import OODDataModule
from ood_lightning.detectors.lfdn import LFDNDetector
from ood_lightning.io import atomic_write_text

from common import REPO, ensure_extracted
from lfdn_timing import TrainingSteps, alternate, batches

B4 = dict(model_name="tf_efficientnet_b4", weights=None, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
          static_same_padding=380)
NETWORKS = {  # name: (backbone options, LFDN width, depth)
    "CPU-sized (Lite0 features, 512-d, 768 x 6)": (dict(model_name="tf_efficientnet_lite0", weights=None), 768, 6),
    "paper (B4 features, 720-d, 1440 x 16)": (B4, 1440, 16),
}
MATMULS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)


class MatmulShapes(TorchDispatchMode):
    """Records the (m, k) x (k, n) operand shapes of every matrix product that runs inside it."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in MATMULS:
            a, b = args[-2], args[-1]  # addmm(bias, a, b), mm(a, b)
            self.shapes.append((a.shape[0], a.shape[1], b.shape[1]))
        return func(*args, **(kwargs or {}))


def cached_vs_uncached_b4(args: argparse.Namespace) -> dict[str, float]:
    """Seconds of a B4 224 px LFDN training epoch on cached features and through the backbone, in one run."""
    dm = OODDataModule("cifar10_jpeg", root=str(args.root), image_size=224, batch_size=args.batch_size,
                       num_workers=2, train_subset=args.train, eval_subset=1)
    dm.setup("fit")
    model = LFDNDetector(MultiLayerFeatures(**B4), hidden_dim=1440, num_blocks=16, cache_dir=str(args.workdir))
    train = dm.loader(dm.train_set, sampler=dm.training_order(dm.train_set))
    steps = TrainingSteps(model)
    cached = [(model.backbone(batch["image"]), batch["index"]) for batch in batches(train, args.step_batches)]
    seconds = alternate({"cached": lambda: steps.from_features(cached),
                         "uncached": lambda: steps.from_images(train, args.step_batches)}, args.rounds)
    scale = len(train) / args.step_batches
    return {"cached_epoch_s": seconds["cached"] * scale, "uncached_epoch_s": seconds["uncached"] * scale,
            "batches": len(train)}


def step_against_matmul(backbone_options: dict, hidden: int, blocks: int, args: argparse.Namespace) -> dict:
    """GFLOP/s of one LFDN training step (batch --batch-size) and of its matrix products replayed alone."""
    backbone = MultiLayerFeatures(**backbone_options)
    model = LFDNDetector(backbone, hidden_dim=hidden, num_blocks=blocks, cache_dir=str(args.workdir))
    steps = TrainingSteps(model)
    features = torch.randn(args.batch_size, backbone.feature_dim)
    index = torch.arange(args.batch_size)
    counter, recorder = FlopCounterMode(display=False), MatmulShapes()
    with counter, recorder:
        steps.step(features, index)
    operands = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in recorder.shapes]
    matmul_flops = sum(2 * m * k * n for m, k, n in recorder.shapes)

    def replay() -> None:
        for a, b in operands:
            torch.mm(a, b)

    seconds = alternate({"step": lambda: steps.step(features, index), "matmul": replay}, args.rounds)
    step_flops = counter.get_total_flops()
    return {"step_gflop": step_flops / 1e9, "step_gflops": step_flops / seconds["step"] / 1e9,
            "matmuls": len(recorder.shapes), "matmul_gflop": matmul_flops / 1e9,
            "matmul_gflops": matmul_flops / seconds["matmul"] / 1e9, "step_ms": 1e3 * seconds["step"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO / "data", help="where the archives are (or get) extracted")
    parser.add_argument("--train", type=int, default=10000, help="training images the epoch is scaled to")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per figure (median reported)")
    parser.add_argument("--step-batches", type=int, default=5, help="training batches timed per epoch round")
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "lfdn_speed")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "lfdn_speed.md")
    args = parser.parse_args()
    ensure_extracted(args.root, ("cifar10",))
    torch.manual_seed(0)

    epoch = cached_vs_uncached_b4(args)
    lines = [
        f"Measured by `{' '.join(['python benchmarks/lfdn_speed.py', *sys.argv[1:]])}` on {torch.get_num_threads()} "
        f"CPU threads, batch "
        f"{args.batch_size}; every figure warmed up, the compared paths timed in turn, median of {args.rounds} "
        "rounds.",
        "",
        f"| EfficientNet-B4 224 px, LFDN 1440 x 16, {args.train} training images ({epoch['batches']} batches) | "
        "epoch |",
        "|---|---:|",
        f"| cached features | {epoch['cached_epoch_s']:.1f} s |",
        f"| backbone every batch (no cache) | {epoch['uncached_epoch_s']:.0f} s "
        f"({epoch['uncached_epoch_s'] / epoch['cached_epoch_s']:.0f}x slower) |",
        "",
        "| LFDN training step | step FLOPs (fwd + bwd) | step time | achieved | its matmuls alone (same shapes) | "
        "step / matmul ceiling |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, (backbone_options, hidden, blocks) in NETWORKS.items():
        r = step_against_matmul(backbone_options, hidden, blocks, args)
        lines.append(f"| {name} | {r['step_gflop']:.2f} GFLOP | {r['step_ms']:.0f} ms | {r['step_gflops']:.1f} "
                     f"GFLOP/s | {r['matmul_gflops']:.1f} GFLOP/s ({r['matmuls']} products, "
                     f"{r['matmul_gflop']:.2f} GFLOP) | {r['step_gflops'] / r['matmul_gflops']:.0%} |")
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(args.out, text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
