"""Every post-hoc baseline (pytorch-ood through PostHocDetector, and our own five) on the CIFAR-10 JPEGs with the
real DenseNet-BC-100: AUROC, FPR95 (95% ID kept) and FPR95 the OpenOOD way on Tiny-ImageNet and MNIST, images/s per
detector, and the cross-check of our MSP / MaxLogit / Energy / KNN / ViM against pytorch-ood's on the same images.

Three evaluate.py stages, each skipped when its results.json exists (an interrupted run continues; delete --out to
start again):
  posthoc   configs/baselines/cifar10_jpeg_all.yaml without its gradient detectors: one classifier pass per batch
            for all of them
  ours      configs/baselines/cifar10_jpeg_densenet.yaml (ClassifierBaselines: msp, mls, ebo, knn, vim)
  gradient  the same config's gradient detectors (ODIN, GradNorm) alone, on --gradient-eval-subset images per set

    python benchmarks/baselines_cifar10_jpeg.py       # extracts ../shared/data into data/ if needed
    python benchmarks/baselines_cifar10_jpeg.py --gradient-eval-subset 200

Images/s of a detector = test images / (its own seconds + the shared classifier pass's seconds), from the seconds
PostHocDetector reports in results.json ("posthoc"); the "ours" row is the whole ClassifierBaselines test stage.
Writes benchmarks/results/baselines_cifar10_jpeg.{md,json}.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from common import REPO, ensure_extracted, evaluate, markdown_table, metric_rows, proof_arguments, run_stages
from scipy.stats import spearmanr

from ood_lightning.io import atomic_write_text

CONFIG = "configs/baselines/cifar10_jpeg_all.yaml"
OURS_CONFIG = "configs/baselines/cifar10_jpeg_densenet.yaml"
OOD_SETS = ["tin", "mnist"]
RESULTS = REPO / "benchmarks" / "results"
GRADIENT = ("odin", "gradnorm")
PAIRS = {"msp": "msp", "mls": "mls", "ebo": "ebo", "knn": "knn", "vim": "vim"}  # ours -> pytorch-ood's score name


def main() -> None:
    parser = proof_arguments(__doc__, out="bench_baselines_cifar10_jpeg", eval_subset=2000)
    parser.add_argument("--train-subset", type=int, default=10000, help="ID train images the detectors fit on")
    parser.add_argument("--gradient-eval-subset", type=int, default=2000,
                        help="images per test set for ODIN and GradNorm (each costs several classifier passes)")
    args = parser.parse_args()
    ensure_extracted(args.root)
    out = args.out.resolve()
    detectors = yaml.safe_load((REPO / CONFIG).read_text())["model"]["init_args"]["detectors"]
    plain = {k: v for k, v in detectors.items() if k not in GRADIENT}
    gradient = {k: v for k, v in detectors.items() if k in GRADIENT}
    data = ["--data.root", str(args.root), "--data.train_subset", str(args.train_subset)]
    # a stage's folder names its sizes, so a rerun with other sizes never reuses (and reports) an older run's results
    folders = {"posthoc": f"posthoc_e{args.eval_subset}_t{args.train_subset}",
               "ours": f"ours_e{args.eval_subset}_t{args.train_subset}",
               "gradient": f"gradient_e{args.gradient_eval_subset}_t{args.train_subset}"}
    stages = [
        evaluate(CONFIG, out, folders["posthoc"], *data, "--data.eval_subset", str(args.eval_subset),
                 "--model.init_args.detectors", json.dumps(plain)),
        evaluate(OURS_CONFIG, out, folders["ours"], *data, "--data.eval_subset", str(args.eval_subset)),
        evaluate(CONFIG, out, folders["gradient"], *data, "--data.eval_subset", str(args.gradient_eval_subset),
                 "--model.init_args.detectors", json.dumps(gradient)),
    ]
    timings = run_stages([], stages, out, args.jobs)

    rows, speed = [], {}
    for stage in ("posthoc", "gradient"):
        stage = folders[stage]
        results = json.loads((out / stage / "results.json").read_text())
        seconds = results["posthoc"]["seconds"]
        first = next(iter(results["scores"].values()))
        images = results["n_id"] + sum(first[s]["n_ood"] for s in OOD_SETS)
        for score in results["scores"]:
            rows += metric_rows(out / stage / "results.json", f"{score} (pytorch-ood)", score, OOD_SETS)
            speed[f"{score} (pytorch-ood)"] = images / sum(s["classifier"] + s[score] for s in seconds.values())
    ours = json.loads((out / folders["ours"] / "results.json").read_text())
    for score in ours["scores"]:
        rows += metric_rows(out / folders["ours"] / "results.json", f"{score} (ours)", score, OOD_SETS)
    crosscheck = {ours_name: compare(out / folders["ours"], out / folders["posthoc"], ours_name, theirs)
                  for ours_name, theirs in PAIRS.items()}
    summary = {"command": "python benchmarks/baselines_cifar10_jpeg.py " + " ".join(
                   f"--{k.replace('_', '-')} {v}" for k, v in (("eval_subset", args.eval_subset),
                                                               ("train_subset", args.train_subset),
                                                               ("gradient_eval_subset", args.gradient_eval_subset))),
               "rows": rows, "images_per_second": speed, "crosscheck": crosscheck, "timings": timings}
    atomic_write_text(RESULTS / "baselines_cifar10_jpeg.json", json.dumps(summary, indent=2) + "\n")
    lines = ["# Post-hoc baselines on the CIFAR-10 JPEGs (DenseNet-BC-100)", "", f"`{summary['command']}`", "",
             *markdown_table(rows, OOD_SETS), "", "## Images per second (test, this machine)", "",
             "| detector | images/s |", "|---|---:|",
             *[f"| {name} | {value:.1f} |" for name, value in speed.items()], "",
             "## Ours against pytorch-ood on the same images", "",
             "| score | max abs diff | max rel diff | Spearman | AUROC ours - theirs (tin, mnist) |",
             "|---|---:|---:|---:|---|",
             *[f"| {k} | {v['max_abs']:.3g} | {v['max_rel']:.3g} | {v['spearman']:.6f} | "
               f"{', '.join(f'{d:+.4f}' for d in v['auroc_diff'])} |" for k, v in crosscheck.items()], "",
             "## Stage times", "", "| stage | time |", "|---|---:|",
             *[f"| {k} | {v / 60:.1f} min |" for k, v in timings.items()], ""]
    atomic_write_text(RESULTS / "baselines_cifar10_jpeg.md", "\n".join(lines))
    print("\n".join(lines))


def compare(ours_run: Path, their_run: Path, ours: str, theirs: str) -> dict:
    """Per-sample agreement of our score and pytorch-ood's on every test set (matched by dataset index)."""
    a, b = [], []
    for name in ["id", *OOD_SETS]:
        with np.load(ours_run / "scores" / f"{name}.npz") as x, np.load(their_run / "scores" / f"{name}.npz") as y:
            assert np.array_equal(np.sort(x["index"]), np.sort(y["index"])), name
            a.append(x[f"score_{ours}"][np.argsort(x["index"])].astype(np.float64))
            b.append(y[f"score_{theirs}"][np.argsort(y["index"])].astype(np.float64))
    a, b = np.concatenate(a), np.concatenate(b)
    o = json.loads((ours_run / "results.json").read_text())["scores"][ours]
    t = json.loads((their_run / "results.json").read_text())["scores"][theirs]
    return {"max_abs": float(np.abs(a - b).max()),
            "max_rel": float((np.abs(a - b) / np.maximum(np.abs(b), 1e-12)).max()),
            "spearman": float(spearmanr(a, b).statistic),
            "auroc_diff": [100 * (o[s]["auroc"] - t[s]["auroc"]) for s in OOD_SETS]}


if __name__ == "__main__":
    main()
