"""Results: per-sample scores -> metric table -> files a person can read and a program can re-use.

Every file is written atomically (temporary name, then rename), so an interrupted run never leaves half a table.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from ood_lightning.metrics import METRICS, group_means, ood_metrics

ID_SET = "id"
COLUMNS = ("score", "ood_set", *METRICS, "n_id", "n_ood", "n_skipped")


def build_results(
    per_set: Mapping[str, dict],
    *,
    benchmark: str,
    detector: str,
    groups: Mapping[str, list[str]],
    wall_time: float,
    extra: Mapping | None = None,
) -> dict:
    """Metrics of every score type on every OOD set against the ID test set, plus near/far group means.

    `per_set` maps test-set name -> ScoreCollector.compute() output; the ID set is named "id".
    """
    id_set = per_set[ID_SET]
    score_names = list(id_set["scores"])
    n_images = sum(len(s["index"]) for s in per_set.values())
    results = {
        "benchmark": benchmark,
        "detector": detector,
        "n_id": len(id_set["index"]),
        "n_skipped": {name: s["n_skipped"] for name, s in per_set.items()},
        "wall_time_s": round(wall_time, 3),
        "images_per_s": round(n_images / wall_time, 2) if wall_time > 0 else None,
        **(extra or {}),
        "scores": {},
    }
    for score in score_names:
        rows = {}
        for name, s in per_set.items():
            if name == ID_SET:
                continue
            rows[name] = ood_metrics(id_set["scores"][score], s["scores"][score])
            rows[name]["n_skipped"] = s["n_skipped"]
        rows.update(group_means(rows, dict(groups)))
        results["scores"][score] = rows
    return results


def table_rows(results: dict) -> list[dict]:
    """One row per (score type, OOD set or group), metric values as fractions in [0, 1]."""
    rows = []
    for score, sets in results["scores"].items():
        for ood_set, m in sets.items():
            rows.append({"score": score, "ood_set": ood_set, **{c: m.get(c) for c in COLUMNS[2:]}})
    return rows


def markdown_table(results: dict) -> str:
    """The table people read: metrics in percent, both FPR95 conventions named."""
    head = ["score", "OOD set", "AUROC", "AUPR-In", "AUPR-Out", "FPR95 (ID 95%)", "FPR95 (OpenOOD)", "n OOD"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table_rows(results):
        pct = [f"{100 * r[m]:.2f}" for m in METRICS]
        lines.append(f"| {r['score']} | {r['ood_set']} | " + " | ".join(pct) + f" | {r['n_ood']} |")
    return "\n".join(lines) + "\n"


def print_results(results: dict, out_dir: Path) -> None:
    print(
        f"\n{results['detector']} on {results['benchmark']}: {results['n_id']} ID test images, "
        f"{results['wall_time_s']:.1f} s\n"
    )
    print(markdown_table(results))
    skipped = {k: v for k, v in results["n_skipped"].items() if v}
    if skipped:
        print(f"unreadable images skipped: {skipped}")
    print(f"results written to {out_dir}/results.{{json,csv,md}}")


def write_results(out_dir: Path, results: dict, per_set: Mapping[str, dict]) -> None:
    """results.json / .csv / .md and scores/<set>.npz (per-sample scores with dataset indices)."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(table_rows(results))
    atomic_write_text(out_dir / "results.csv", buf.getvalue())
    atomic_write_text(out_dir / "results.md", markdown_table(results))
    for name, s in per_set.items():
        arrays = {"index": s["index"], **{f"score_{k}": v for k, v in s["scores"].items()}}
        atomic_write(out_dir / "scores" / f"{name}.npz", lambda f, a=arrays: np.savez(f, **a))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write(path: Path, write) -> None:
    """Write through `write(file)` to a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
