"""Proof 2: DiffGuard on CIFAR-10 with the real DenseNet-BC-100 and a diffusion model trained here on CPU.

The CIFAR-10 JPEGs are in distribution, Tiny-ImageNet the near and MNIST the far OOD set (the cifar10_jpeg preset).
The classifier-under-protection is the real DenseNet-BC-100 of ../shared/weights. No CIFAR-10 diffusion model can
be downloaded here, so this trains one (configs/diffusion/cifar10_jpeg.yaml: 1.6 M parameters, 32 px, a
10,000-image subset) for a fixed number of optimizer steps, as long as a CPU run allows, then scores a seeded subset
of every test set with the classifier baselines (MSP, MaxLogit, Energy, KNN on the same 10,000 training images),
DiffGuard's classifier-guided path (configs/diffguard/cifar10_gdm.yaml: the released GDM algorithm, logits-L1
distance as the paper uses for CIFAR) and its oracle, and the classifier-free path on the same model through the
pixel back-end (configs/diffguard/cifar10_cfg.yaml), with and without the Grad-CAM mask.

    python benchmarks/diffguard_cifar10.py                    # extracts ../shared/data into data/ if needed
    python benchmarks/diffguard_cifar10.py --train-steps 5000 --eval-subset 500

Every stage is a train.py / evaluate.py command printed before it runs, and is skipped when its output is already
in --out, so an interrupted run continues (delete --out to start from scratch). Writes
benchmarks/results/diffguard_cifar10.{md,json}, diffguard_cifar10_grid.png (inputs and re-syntheses) and
diffguard_cifar10_samples.png (the diffusion model's samples after its last epoch).
"""
from __future__ import annotations

import json
import shutil

from common import (REPO, Stage, ensure_extracted, evaluate, grid_rows, labelled_figure, markdown_table,
                    metric_rows, predictions, proof_arguments, run_stages, timing_rows)

from ood_lightning.io import atomic_write_text

OOD_SETS = ["tin", "mnist"]
RESULTS = REPO / "benchmarks" / "results"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def main() -> None:
    parser = proof_arguments(__doc__, out="bench_cifar10", eval_subset=50)
    parser.add_argument("--train-steps", type=int, default=628,
                        help="optimizer steps of the diffusion model (628 = 4 epochs of the 10,000 images)")
    args = parser.parse_args()
    ensure_extracted(args.root)
    out = args.out.resolve()
    data = ["--data.root", str(args.root), "--data.eval_subset", str(args.eval_subset)]
    gdm = ["--model.init_args.diffusion_model", str(out / "unet"), "--model.init_args.null_class", "10"]
    cfg = ["--model.init_args.diffusion_model", str(out / "unet")]
    trainings = [
        Stage("train diffusion", ["train.py", "--config", "configs/diffusion/cifar10_jpeg.yaml", "--data.root",
                                  str(args.root), "--trainer.max_steps", str(args.train_steps),
                                  "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "10",
                                  "--model.init_args.sample_every_n_epochs", "1",
                                  "--trainer.default_root_dir", str(out / "diffusion"),
                                  "--model.init_args.export_dir", str(out / "unet")], out / "unet" / "diffguard.json"),
    ]
    evaluations = [
        evaluate("configs/baselines/cifar10_jpeg_densenet.yaml", out, "baselines", *data,
                 "--data.train_subset", "10000", "--model.init_args.scores", "[msp, mls, ebo, knn]"),
        evaluate("configs/diffguard/cifar10_gdm.yaml", out, "gdm", *gdm, *data),
        evaluate("configs/diffguard/cifar10_gdm.yaml", out, "gdm_oracle", *gdm, *data,
                 "--model.init_args.oracle", "true"),
        evaluate("configs/diffguard/cifar10_cfg.yaml", out, "cfg", *cfg, *data),
        evaluate("configs/diffguard/cifar10_cfg.yaml", out, "cfg_no_mask", *cfg, *data,
                 "--model.init_args.use_cam", "false"),
    ]
    timings = run_stages(trainings, evaluations, out, args.jobs)

    rows = []
    for method, score in (("MSP", "msp"), ("MaxLogit", "mls"), ("Energy", "ebo"), ("KNN (k=50)", "knn")):
        rows += metric_rows(out / "baselines" / "results.json", method, score, OOD_SETS)
    for method, run in (("DiffGuard GDM (classifier guidance)", "gdm"), ("DiffGuard GDM, oracle", "gdm_oracle"),
                        ("DiffGuard CFG + Grad-CAM mask", "cfg"), ("DiffGuard CFG, no mask", "cfg_no_mask")):
        rows += metric_rows(out / run / "results.json", method, "logits_l1", OOD_SETS)

    figure = RESULTS / "diffguard_cifar10_grid.png"
    figure_rows, captions = [], []
    for dataset, name in (("id", "CIFAR-10"), ("tin", "TIN (OOD)")):
        gdm_tiles = grid_rows(out / "gdm" / "grids" / f"{dataset}.png", 32, [0, 2])
        cfg_tiles = grid_rows(out / "cfg" / "grids" / f"{dataset}.png", 32, [1, 2])
        figure_rows += [(f"{name} input", gdm_tiles[0]), ("GDM synthesis", gdm_tiles[1]),
                        ("CFG + mask synthesis", cfg_tiles[0]), ("Grad-CAM mask", cfg_tiles[1])]
        captions.append(predictions(out / "gdm", dataset))
    labelled_figure(figure_rows, [f"{CLASSES[a][:5]}/{CLASSES[b][:5]}" for a, b in zip(*captions)][:8], figure,
                    scale=3)

    samples = RESULTS / "diffguard_cifar10_samples.png"  # the last epoch's grid: rows = the 10 classes, then none
    shutil.copy(sorted((out / "diffusion").glob("lightning_logs/version_*/samples/epoch_*.png"))[-1], samples)

    info = json.loads((out / "unet" / "diffguard.json").read_text())
    unet_config = json.loads((out / "unet" / "config.json").read_text())
    size_mb = sum(p.stat().st_size for p in (out / "unet").glob("*.safetensors")) / 1e6
    lines = [
        f"DiffGuard (logits-L1) on the CIFAR-10 JPEGs against Tiny-ImageNet (near) and MNIST "
        f"(far): {args.eval_subset} seeded images per test set, the real DenseNet-BC-100 for every row; the diffusion "
        f"model ({unet_config['block_out_channels']} channels, {size_mb:.1f} MB of weights) trained here for "
        f"{info['ema_updates']} steps of 64 images on 10,000 training images. "
        f"`python benchmarks/diffguard_cifar10.py --train-steps {args.train_steps} --eval-subset {args.eval_subset}`.",
        "",
        *markdown_table(rows, OOD_SETS),
        "",
        "| stage (wall time on 2 CPU cores) | time |",
        "|---|---:|",
        *timing_rows(timings),
        "",
        f"Figure: `benchmarks/results/{figure.name}`; columns captioned with the DenseNet's prediction on the "
        "CIFAR-10 image / on the TIN image above each other. The diffusion model's own samples (guidance scale 3, "
        f"rows: the 10 classes, then unconditional): `benchmarks/results/{samples.name}`.",
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    atomic_write_text(RESULTS / "diffguard_cifar10.md", text)
    atomic_write_text(RESULTS / "diffguard_cifar10.json", json.dumps(
        {"eval_subset": args.eval_subset, "train_steps": args.train_steps, "rows": rows, "timings_s": timings},
        indent=2) + "\n")
    print(f"written to {RESULTS / 'diffguard_cifar10.md'}")


if __name__ == "__main__":
    main()
