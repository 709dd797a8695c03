"""predict.py on new images with a trained LFDN: its calibrated thresholds at work, its contact sheet, and its speed
against evaluate.py on the same images.

    python benchmarks/predict_lfdn.py     # the LFDN of benchmarks/lfdn_study.py's default stage (train it first)
    python benchmarks/predict_lfdn.py --run RUN_FOLDER --per-source 100

1. Copies the run's config.yaml and checkpoints/last.ckpt into --out/run and calibrates it there
   (`evaluate.py --calibrate true`: thresholds at 95% ID TPR on 1,000 held-out CIFAR-10 train JPEGs).
2. Builds a folder of new images, --per-source of each source by file name (every k-th file, not picked):
   CIFAR-10 test JPEGs (in distribution), Tiny-ImageNet val files of the test half (odd numbers), MNIST test digits.
3. Times, one after the other on that folder: evaluate.py (`folders` preset, an empty feature cache, so it computes
   the backbone as predict.py does) and predict.py; then counts predict.py's decisions per source.
Writes benchmarks/results/predict_lfdn.md and predict_lfdn_contact_sheet.png.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, ensure_extracted

from ood_lightning.io import atomic_write_text

RESULTS = REPO / "benchmarks" / "results"
SOURCES = {"cifar10": "cifar10/test/*/*.jpg", "tin": "tin/val/*.jpg", "mnist": "mnist/test/*/*.jpg"}


def source_files(root: Path, name: str, count: int) -> list[Path]:
    files = sorted(root.glob(SOURCES[name]))
    if name == "tin":  # the test half of cifar10_jpeg_tin_halves: odd file numbers
        files = [f for f in files if int(f.stem.split("_")[-1]) % 2 == 1]
    step = max(1, len(files) // count)
    return files[::step][:count]


def run(command: list[str], log: Path) -> float:
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        subprocess.run([sys.executable, *command], cwd=REPO, check=True, stdout=out, stderr=subprocess.STDOUT)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "lfdn_study" / "default",
                        help="a trained LFDN's run folder (config.yaml, checkpoints/last.ckpt)")
    parser.add_argument("--root", type=Path, default=REPO / "data", help="where the archives are (or get) extracted")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "predict_lfdn", help="this benchmark's files")
    parser.add_argument("--per-source", type=int, default=100, help="images of each source in the new folder")
    args = parser.parse_args()
    ensure_extracted(args.root)
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    run_dir = out / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(args.run / "config.yaml", run_dir / "config.yaml")
    shutil.copy(args.run / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "last.ckpt")
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    run(["evaluate.py", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(ckpt), "--calibrate", "true",
         "--results_dir", str(run_dir), "--plots", "false", "--trainer.enable_progress_bar", "false"],
        out / "calibrate.log")
    calibration = json.loads((run_dir / "calibration.json").read_text())

    images = out / "images"
    for name in SOURCES:
        (images / name).mkdir(parents=True)
        for path in source_files(args.root, name, args.per_source):
            shutil.copy(path, images / name / f"{path.parent.name}_{path.name}")
    evaluate_s = run(["evaluate.py", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(ckpt),
                      "--data.benchmark", "folders", "--data.root", "null", "--data.id_test", str(images / "cifar10"),
                      "--data.ood", json.dumps({"tin": str(images / "tin"), "mnist": str(images / "mnist")}),
                      "--data.train", "false", "--data.eval_subset", "null", "--model.init_args.cache_dir",
                      str(out / "empty_cache"), "--results_dir", str(out / "evaluate"), "--plots", "false",
                      "--calibrate", "false", "--trainer.enable_progress_bar", "false"], out / "evaluate.log")
    predict_s = run(["predict.py", "--run", str(run_dir), "--images", str(images), "--out_dir", str(out / "predict"),
                     "--trainer.enable_progress_bar", "false"], out / "predict.log")

    with open(out / "predict" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    scores = list(calibration["scores"])
    lines = [f"predict.py with the LFDN of `{args.run.relative_to(REPO) if args.run.is_relative_to(REPO) else args.run}`"
             f", calibrated on {calibration['n_id']} held-out CIFAR-10 train JPEGs at target ID TPR "
             f"{calibration['target_tpr']}, on {len(rows)} new images ({args.per_source} per source, every k-th file "
             f"by name). `python benchmarks/predict_lfdn.py --per-source {args.per_source}`.", "",
             "| score | threshold | " + " | ".join(f"{s} flagged OOD" for s in SOURCES) + " |",
             "|---|---:|" + "---:|" * len(SOURCES)]
    for score in scores:
        rates = []
        for name in SOURCES:
            own = [r for r in rows if f"/{name}/" in r["path"]]
            rates.append(100 * sum(r[f"ood_{score}"] == "1" for r in own) / len(own))
        lines.append(f"| {score} | {calibration['scores'][score]['threshold']:.4g} | "
                     + " | ".join(f"{r:.1f}%" for r in rates) + " |")
    lines += ["", "| command, same images, one after the other (wall time, this machine) | seconds |", "|---|---:|",
              f"| evaluate.py (`folders`, empty feature cache) | {evaluate_s:.1f} |",
              f"| predict.py | {predict_s:.1f} |", "",
              f"predict.py / evaluate.py time: {predict_s / evaluate_s:.2f}. Contact sheet (most-OOD and most-ID "
              "images by `mse`): `benchmarks/results/predict_lfdn_contact_sheet.png`.", ""]
    shutil.copy(out / "predict" / "contact_sheet.png", RESULTS / "predict_lfdn_contact_sheet.png")
    atomic_write_text(RESULTS / "predict_lfdn.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
