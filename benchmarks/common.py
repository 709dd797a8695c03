"""What the benchmark scripts share: the offline data, stages that run train.py / evaluate.py and are skipped when
their output exists (an interrupted benchmark continues where it stopped), and the metric tables."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ood_lightning.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
PARALLEL_WALL = "evaluations side by side (wall time)"


def proof_arguments(description: str, out: str, eval_subset: int) -> argparse.ArgumentParser:
    """The options every DiffGuard proof takes: where the data and the runs go, the test-set size, parallelism."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO / "data", help="where the archives are (or get) extracted")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / out, help="trained models and runs")
    parser.add_argument("--eval-subset", type=int, default=eval_subset, help="images per test set (seeded subset)")
    parser.add_argument("--jobs", type=int, default=1, help="evaluations run at the same time (each gets its share "
                        "of the CPU threads)")
    return parser


def ensure_extracted(root: Path, folders: tuple[str, ...] = ("cifar10", "tin", "mnist")) -> None:
    """Extract ../shared/data/<folder>.tar.gz into `root` for every folder not there yet."""
    for folder in folders:
        if not (root / folder).is_dir():
            source = SHARED_DATA / f"{folder}.tar.gz"
            if not source.is_file():
                raise SystemExit(f"{root / folder} is missing and {source} is not there to extract it from")
            print(f"extracting {source} -> {root}")
            with tarfile.open(source) as tar:
                tar.extractall(root, filter="data")


@dataclass
class Stage:
    """One command of a benchmark; `done` is the file it leaves when it has finished."""

    name: str
    command: list[str]
    done: Path


def evaluate(config: str, out: Path, name: str, *extra: str) -> Stage:
    """evaluate.py on `config` with its results in <out>/<name> (without a logger, the run folder is the trainer's
    default_root_dir); `extra` are further command-line arguments."""
    folder = out / name
    return Stage(name, ["evaluate.py", "--config", config, "--trainer.default_root_dir", str(folder),
                        "--trainer.logger", "false", *extra], folder / "results.json")


def run_stages(trainings: list[Stage], evaluations: list[Stage], out: Path, jobs: int = 1) -> dict[str, float]:
    """Run, from the project root, each stage whose `done` file is missing: the trainings one after the other, then
    the evaluations, `jobs` at a time (each with its share of the CPU threads and its output in <out>/<name>.log
    when jobs > 1). The wall time of every stage is kept in <out>/timings.json; a skipped stage keeps the time of
    the run that made its output."""
    timings_file = out / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    lock = threading.Lock()

    def run(stage: Stage, env: dict[str, str] | None = None) -> None:
        if stage.done.exists():
            print(f"[{stage.name}] done already ({stage.done}); skipped")
            return
        log = out / f"{stage.name.replace(' ', '_')}.log" if env else None
        print(f"[{stage.name}] {' '.join(stage.command)}" + (f"  (output: {log})" if log else ""), flush=True)
        start = time.perf_counter()
        with open(log, "w") if log else contextlib.nullcontext() as output:
            subprocess.run([sys.executable, *stage.command], cwd=REPO, check=True, env=env, stdout=output,
                           stderr=subprocess.STDOUT if log else None)
        if not stage.done.exists():
            raise SystemExit(f"[{stage.name}] finished without writing {stage.done}")
        with lock:
            timings[stage.name] = round(time.perf_counter() - start, 1)
            atomic_write_text(timings_file, json.dumps(timings, indent=2) + "\n")
        print(f"[{stage.name}] finished in {minutes(timings[stage.name])}", flush=True)

    for stage in trainings:
        run(stage)
    if jobs == 1:
        for stage in evaluations:
            run(stage)
    else:
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // jobs))
        env = {**os.environ, "OMP_NUM_THREADS": threads}
        start = time.perf_counter()
        pending = [stage for stage in evaluations if not stage.done.exists()]
        with ThreadPoolExecutor(jobs) as pool:
            for future in [pool.submit(run, stage, env) for stage in evaluations]:
                future.result()
        if pending:
            timings[PARALLEL_WALL] = round(time.perf_counter() - start, 1)
            atomic_write_text(timings_file, json.dumps(timings, indent=2) + "\n")
    names = [stage.name for stage in trainings + evaluations] + [PARALLEL_WALL]
    return {name: timings[name] for name in names if name in timings}


def timing_rows(timings: dict[str, float]) -> list[str]:
    """The stage times as table rows, and the total: the sum of the stages, or the trainings plus the wall time of
    the evaluations when they ran side by side."""
    stages = {name: seconds for name, seconds in timings.items() if name != PARALLEL_WALL}
    trainings = sum(seconds for name, seconds in stages.items() if name.startswith("train"))
    rows = [f"| {name} | {minutes(seconds)} |" for name, seconds in stages.items()]
    if PARALLEL_WALL in timings:
        rows.append(f"| {PARALLEL_WALL} | {minutes(timings[PARALLEL_WALL])} |")
        total = trainings + timings[PARALLEL_WALL]
    else:
        total = sum(stages.values())
    return rows + [f"| **all** (trainings: {minutes(trainings)}) | **{minutes(total)}** |"]


def metric_rows(results_file: Path, method: str, score: str, ood_sets: list[str]) -> list[dict]:
    """One row per OOD set for `score` of an evaluate.py results.json, percentages."""
    results = json.loads(results_file.read_text())
    rows = []
    for ood in ood_sets:
        m = results["scores"][score][ood]
        rows.append({"method": method, "ood": ood, "auroc": 100 * m["auroc"], "fpr95": 100 * m["fpr95"],
                     "fpr95_openood": 100 * m["fpr95_openood"], "n_id": m["n_id"], "n_ood": m["n_ood"]})
    return rows


def predictions(run: Path, dataset: str) -> list[int]:
    """A DiffGuard run's per-image predictions on a set, in loader order (the order its grids show)."""
    with np.load(run / "scores" / f"{dataset}.npz") as scores:
        return scores["extra_prediction"][np.argsort(scores["index"])].tolist()


def markdown_table(rows: list[dict], ood_sets: list[str]) -> list[str]:
    """Methods down, per OOD set AUROC / FPR95 at 95% ID kept / FPR95 the OpenOOD way (95% OOD caught)."""
    methods = list(dict.fromkeys(row["method"] for row in rows))
    by_key = {(row["method"], row["ood"]): row for row in rows}
    columns = [f"{ood} AUROC ↑ | {ood} FPR95 ↓ | {ood} FPR95 OpenOOD ↓" for ood in ood_sets]
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---:|" * 3 * len(ood_sets)]
    for method in methods:
        cells = []
        for ood in ood_sets:
            row = by_key[(method, ood)]
            cells += [f"{row['auroc']:.2f}", f"{row['fpr95']:.2f}", f"{row['fpr95_openood']:.2f}"]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def grid_rows(grid_png: Path, tile: int, rows: list[int]) -> list[list]:
    """The tiles of the chosen rows of a detector's grids/<set>.png (torchvision make_grid, padding 1) as PIL
    images, row by row."""
    from PIL import Image

    with Image.open(grid_png) as grid:
        grid = grid.convert("RGB")
        columns = (grid.width - 1) // (tile + 1)
        return [[grid.crop((1 + c * (tile + 1), 1 + r * (tile + 1), 1 + c * (tile + 1) + tile,
                            1 + r * (tile + 1) + tile)) for c in range(columns)] for r in rows]


def labelled_figure(rows: list[tuple[str, list]], column_labels: list[str], out: Path, scale: int = 6) -> None:
    """Rows of tiles, each row named on its left, each column captioned on top, tiles enlarged `scale` times
    (nearest neighbour, so no detail is invented)."""
    from PIL import Image, ImageDraw

    tile = rows[0][1][0].width * scale
    name_width, caption_height, gap = 150, 18, 4
    columns = len(column_labels)
    figure = Image.new("RGB", (name_width + columns * (tile + gap), caption_height + len(rows) * (tile + gap)),
                       "white")
    draw = ImageDraw.Draw(figure)
    for c, label in enumerate(column_labels):
        draw.text((name_width + c * (tile + gap) + 2, 3), label, fill="black")
    for r, (name, tiles) in enumerate(rows):
        y = caption_height + r * (tile + gap)
        draw.text((4, y + tile // 2 - 6), name, fill="black")
        for c, image in enumerate(tiles[:columns]):
            figure.paste(image.resize((tile, tile), Image.NEAREST), (name_width + c * (tile + gap), y))
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(out)
