"""Proof 1: DiffGuard on your own data, semantic shift inside one domain, everything trained here on CPU.

MNIST digits 0-4 are in distribution, digits 5-9 the near OOD set, Tiny-ImageNet and CIFAR-10 far OOD (the
mnist_0_4 preset: a fixed split of ../shared/data/mnist.tar.gz by file number). From nothing, this trains the
classifier-under-protection (configs/classifier/mnist_0_4.yaml) and the class-conditional diffusion model
(configs/diffusion/mnist_0_4.yaml) on the in-distribution training part, then scores a seeded subset of every test
set with the classifier baselines (MSP, MaxLogit, Energy, KNN), DiffGuard's classifier-guided path (GDM), its
classifier-free path (CFG, the pixel back-end) with the Grad-CAM mask and without it, and the oracle of each path;
then the cascades (configs/fusion/mnist_0_4_*.yaml: MSP + GDM, MSP + CFG without mask, KNN + GDM), which run DiffGuard
only on the band between the baseline's ID-validation quantiles, with the fraction of images DiffGuard ran on, its
UNet passes per image and the wall time of each; last, both paths re-synthesise the first eight 7s of the OOD set (by
file number, not picked) for the figure.

    python benchmarks/diffguard_mnist.py                      # extracts ../shared/data into data/ if needed
    python benchmarks/diffguard_mnist.py --eval-subset 100 --out runs/bench_mnist_small --jobs 2

Every stage is a train.py / evaluate.py command printed before it runs, and is skipped when its output is already
in --out, so an interrupted run continues (delete --out to start from scratch). Writes
benchmarks/results/diffguard_mnist.{md,json} and diffguard_mnist_sevens.png.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np

from common import (REPO, Stage, ensure_extracted, evaluate, grid_rows, labelled_figure, markdown_table,
                    metric_rows, predictions, proof_arguments, run_stages, timing_rows)

from ood_lightning.io import atomic_write_text

OOD_SETS = ["mnist_5_9", "tin", "cifar10"]
RESULTS = REPO / "benchmarks" / "results"


def sevens_data(root: Path, folder: Path) -> None:
    """The first eight 7s of the OOD set and the first two evaluation images of each digit 0-4, by file number."""
    if folder.is_dir():
        return
    sevens = sorted((root / "mnist" / "test" / "7").glob("*.jpg"))[:8]
    (folder / "sevens").mkdir(parents=True)
    for path in sevens:
        shutil.copy(path, folder / "sevens" / path.name)
    for digit in range(5):
        (folder / "id" / str(digit)).mkdir(parents=True)
        evaluation_part = [p for p in sorted((root / "mnist" / "test" / str(digit)).glob("*.jpg"))
                           if int(p.stem) % 5 == 0]
        for path in evaluation_part[:2]:
            shutil.copy(path, folder / "id" / str(digit) / path.name)


# (run, config, method, fused score, extra evaluate.py arguments) of each cascade
CASCADES = [
    ("cascade_gdm_msp", "configs/fusion/mnist_0_4_gdm_msp.yaml", "MSP + DiffGuard GDM (cascade)", "logits_l1+msp", []),
    ("cascade_cfg_msp", "configs/fusion/mnist_0_4_cfg_msp.yaml", "MSP + DiffGuard CFG, no mask (cascade)",
     "logits_l1+msp", []),
    ("cascade_gdm_knn", "configs/fusion/mnist_0_4_gdm_msp.yaml", "KNN + DiffGuard GDM (cascade)", "logits_l1+knn",
     ["--model.init_args.baseline.init_args.scores", "[knn]", "--model.init_args.baseline_score", "knn"]),
]


def cascade_cost(out: Path, timings: dict[str, float]) -> list[str]:
    """Table rows: for full GDM and CFG (no mask) and each cascade, the share of images DiffGuard ran on (overall and
    per set), DiffGuard's UNet passes per image of the evaluation (from its per-sample unet_evals) and the wall time."""
    sets = ["id", *OOD_SETS]
    lines = []
    for run, label in (("gdm", "DiffGuard GDM on every image"), ("cfg_no_mask", "DiffGuard CFG, no mask, on every "
                                                                   "image")):
        unet = [np.load(out / run / "scores" / f"{name}.npz")["extra_unet_evals"] for name in sets]
        lines.append(f"| {label} | 100.0% | all | {np.concatenate(unet).mean():.1f} | {timings[run] / 60:.1f} min |")
    for run, _, method, _, _ in CASCADES:
        block = json.loads((out / run / "results.json").read_text())["fusion"]["cost"]
        images = sum(block[name]["images"] for name in sets)
        refined = sum(block[name]["refined"] for name in sets)
        per_set = ", ".join(f"{100 * block[name]['refined_fraction']:.0f}%" for name in sets)
        passes = f"{sum(block[n]['refiner_unet_evals_per_image'] * block[n]['images'] for n in sets) / images:.1f}"
        lines.append(f"| {method} | {100 * refined / images:.1f}% | {per_set} | {passes} | "
                     f"{timings[run] / 60:.1f} min |")
    return lines


def final_val_accuracy(run_root: Path) -> float:
    """The classifier's last logged val/acc (the CSV logger of its training run)."""
    (metrics,) = run_root.glob("lightning_logs/version_*/metrics.csv")
    with open(metrics) as f:
        return [float(row["val/acc"]) for row in csv.DictReader(f) if row.get("val/acc")][-1]


def main() -> None:
    parser = proof_arguments(__doc__, out="bench_mnist", eval_subset=200)
    args = parser.parse_args()
    ensure_extracted(args.root)
    out = args.out.resolve()
    trained = ["--model.init_args.classifier_weights", str(out / "classifier.pt")]
    diffusion = ["--model.init_args.diffusion_model", str(out / "unet")]
    data = ["--data.root", str(args.root), "--data.eval_subset", str(args.eval_subset)]
    sevens = ["--data.benchmark", "folders", "--data.root", "null", "--data.id_test", str(out / "sevens_data" / "id"),
              "--data.ood", json.dumps({"sevens": str(out / "sevens_data" / "sevens")}),
              "--model.init_args.grid_images", "8"]
    sevens_data(args.root, out / "sevens_data")
    trainings = [
        Stage("train classifier", ["train.py", "--config", "configs/classifier/mnist_0_4.yaml", "--data.root",
                                   str(args.root), "--trainer.default_root_dir", str(out / "classifier"),
                                   "--model.init_args.export_path", str(out / "classifier.pt")], out / "classifier.pt"),
        Stage("train diffusion", ["train.py", "--config", "configs/diffusion/mnist_0_4.yaml", "--data.root",
                                  str(args.root), "--trainer.default_root_dir", str(out / "diffusion"),
                                  "--model.init_args.export_dir", str(out / "unet")], out / "unet" / "diffguard.json"),
    ]
    fused = ["--model.init_args.baseline.init_args.classifier_weights", str(out / "classifier.pt"),
             "--model.init_args.refiner.init_args.classifier_weights", str(out / "classifier.pt"),
             "--model.init_args.refiner.init_args.diffusion_model", str(out / "unet")]
    evaluations = [
        evaluate("configs/baselines/mnist_0_4.yaml", out, "baselines", *trained, *data),
        evaluate("configs/diffguard/mnist_0_4_cfg.yaml", out, "cfg", *trained, *diffusion, *data),
        evaluate("configs/diffguard/mnist_0_4_cfg.yaml", out, "cfg_no_mask", *trained, *diffusion, *data,
                 "--model.init_args.use_cam", "false"),
        evaluate("configs/diffguard/mnist_0_4_cfg.yaml", out, "cfg_oracle", *trained, *diffusion, *data,
                 "--model.init_args.oracle", "true", "--model.init_args.use_cam", "false"),
        evaluate("configs/diffguard/mnist_0_4_gdm.yaml", out, "gdm", *trained, *diffusion, *data),
        evaluate("configs/diffguard/mnist_0_4_gdm.yaml", out, "gdm_oracle", *trained, *diffusion, *data,
                 "--model.init_args.oracle", "true"),
        *[evaluate(config, out, name, *fused, *data, *extra) for name, config, _, _, extra in CASCADES],
        evaluate("configs/diffguard/mnist_0_4_cfg.yaml", out, "sevens_cfg", *trained, *diffusion, *sevens),
        evaluate("configs/diffguard/mnist_0_4_cfg.yaml", out, "sevens_cfg_no_mask", *trained, *diffusion, *sevens,
                 "--model.init_args.use_cam", "false"),
        evaluate("configs/diffguard/mnist_0_4_gdm.yaml", out, "sevens_gdm", *trained, *diffusion, *sevens),
    ]
    timings = run_stages(trainings, evaluations, out, args.jobs)

    rows = []
    for method, score in (("MSP", "msp"), ("MaxLogit", "mls"), ("Energy", "ebo"), ("KNN (k=50)", "knn")):
        rows += metric_rows(out / "baselines" / "results.json", method, score, OOD_SETS)
    for method, run in (("DiffGuard GDM (classifier guidance)", "gdm"), ("DiffGuard GDM, oracle", "gdm_oracle"),
                        ("DiffGuard CFG + Grad-CAM mask", "cfg"), ("DiffGuard CFG, no mask", "cfg_no_mask"),
                        ("DiffGuard CFG, oracle (no mask)", "cfg_oracle")):
        rows += metric_rows(out / run / "results.json", method, "logits_l1", OOD_SETS)
    for name, _, method, score, _ in CASCADES:
        rows += metric_rows(out / name / "results.json", method, score, OOD_SETS)
    cost = cascade_cost(out, timings)
    sevens_predictions = predictions(out / "sevens_cfg", "sevens")
    figure = RESULTS / "diffguard_mnist_sevens.png"
    cfg_rows = grid_rows(out / "sevens_cfg" / "grids" / "sevens.png", 16, [0, 1, 2])
    no_mask_rows = grid_rows(out / "sevens_cfg_no_mask" / "grids" / "sevens.png", 16, [1])
    gdm_rows = grid_rows(out / "sevens_gdm" / "grids" / "sevens.png", 16, [2])
    labelled_figure([("OOD input", cfg_rows[0]), ("CFG + mask synthesis", cfg_rows[1]),
                     ("Grad-CAM mask", cfg_rows[2]), ("CFG, no mask", no_mask_rows[0]),
                     ("GDM synthesis", gdm_rows[0])],
                    [f"pred. {p}" for p in sevens_predictions[:8]], figure)

    accuracy = final_val_accuracy(out / "classifier")
    lines = [
        f"DiffGuard on MNIST digits 0-4 (in distribution) against digits 5-9, Tiny-ImageNet and CIFAR-10: "
        f"{args.eval_subset} seeded images per test set, 16 px, logits-L1 distance for DiffGuard, the same "
        f"ResNet-20 for every row ({100 * accuracy:.2f}% accurate on the held-out digits 0-4). "
        "`python benchmarks/diffguard_mnist.py "
        f"--eval-subset {args.eval_subset}`, from scratch.",
        "",
        *markdown_table(rows, OOD_SETS),
        "",
        "The cascades run DiffGuard only on the images whose baseline score lies between its 5% and 95% quantiles on "
        "1,000 ID validation images (digits 0-4 of the train split); elsewhere the baseline decides "
        "(docs/diffguard.md (Cascade cost)). What they cost, beside DiffGuard on every image:",
        "",
        "| run | DiffGuard ran on (all sets) | per set (" + ", ".join(["id", *OOD_SETS]) + ") "
        "| DiffGuard's UNet passes per image | wall time |",
        "|---|---:|---|---:|---:|",
        *cost,
        "",
        "| stage (wall time on 2 CPU cores) | time |",
        "|---|---:|",
        *timing_rows(timings),
        "",
        f"Figure: `benchmarks/results/{figure.name}`; the first eight 7s of the OOD set, the classifier's "
        f"predictions on top ({', '.join(map(str, sevens_predictions[:8]))}).",
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    atomic_write_text(RESULTS / "diffguard_mnist.md", text)
    atomic_write_text(RESULTS / "diffguard_mnist.json", json.dumps(
        {"eval_subset": args.eval_subset, "rows": rows, "cascade_cost": cost, "timings_s": timings,
         "sevens_predictions": sevens_predictions, "id_accuracy": accuracy}, indent=2) + "\n")
    print(f"written to {RESULTS / 'diffguard_mnist.md'}")


if __name__ == "__main__":
    main()
