"""Thresholds that turn scores into decisions, set on in-distribution images only.

A detector's score for each score type is compared with a threshold: above it an image is flagged OOD. The
threshold of a score type is the smallest ID score value at or below which a fraction `tpr` (default 0.95, the FPR95
convention's operating point) of the held-out in-distribution validation images fall, so on those images the ID
true-positive rate is `tpr` (more with ties). The validation images are in-distribution train files the detector
was not fit on (OODDataModule.calibration_set), never test or OOD images. The ID score quantiles are stored too,
by the same rule, so another operating point needs no new scoring (`threshold_from_quantiles`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ood_lightning.io import atomic_write_text

CALIBRATION_FILE = "calibration.json"
DEFAULT_TPR = 0.95
QUANTILE_LEVELS = (0.5, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)


class NoCalibrationError(FileNotFoundError):
    """A decision was asked of a detector that has no calibrated threshold."""


HOW_TO_CALIBRATE = (
    "A threshold comes from in-distribution validation images only. Trained detectors (LFDN) calibrate at the end "
    "of train.py when in-distribution train images are left over for it (or with --calibration_size N, which holds N "
    "of them out of training); any detector of a config calibrates with\n"
    "  python evaluate.py --config CONFIG [--ckpt_path CKPT] --calibrate true [--calibration_size N]\n"
    "which writes calibration.json into the run folder (or --results_dir). Scores without decisions need none.")


def threshold_at_tpr(id_scores: np.ndarray, tpr: float) -> float:
    """The smallest ID score s with at least a fraction `tpr` of `id_scores` <= s (higher score = more OOD)."""
    if not 0 < tpr <= 1:
        raise ValueError(f"the target ID true-positive rate must be in (0, 1], got {tpr}")
    ordered = np.sort(np.asarray(id_scores, dtype=np.float64))
    if not len(ordered) or not np.all(np.isfinite(ordered)):
        raise ValueError(f"calibration needs finite ID scores; got {len(ordered)} with "
                         f"{int(np.sum(~np.isfinite(ordered)))} not finite")
    return float(ordered[max(math.ceil(tpr * len(ordered) - 1e-9), 1) - 1])


def calibrate_scores(id_scores: dict[str, np.ndarray], tpr: float = DEFAULT_TPR, **identity) -> dict:
    """calibration.json's content: per score type the threshold at `tpr`, the TPR it reaches on these scores and the
    ID score quantiles; `identity` (n_id, seed, config_hash, checkpoint, ...) is stored beside them."""
    scores = {}
    for name, values in id_scores.items():
        values = np.asarray(values, dtype=np.float64)
        threshold = threshold_at_tpr(values, tpr)
        scores[name] = {
            "threshold": threshold,
            "tpr": float(np.mean(values <= threshold)),
            "quantiles": {str(level): threshold_at_tpr(values, level) for level in QUANTILE_LEVELS},
        }
    return {"target_tpr": float(tpr), **identity, "scores": scores}


def threshold_from_quantiles(calibration: dict, score: str, tpr: float) -> float:
    """The threshold of `score` at a stored quantile level `tpr` (one of QUANTILE_LEVELS), without re-scoring."""
    quantiles = calibration["scores"][score]["quantiles"]
    if str(tpr) not in quantiles:
        raise KeyError(f"no stored ID quantile at {tpr} for {score!r}; stored: {', '.join(quantiles)}")
    return float(quantiles[str(tpr)])


def decisions(scores: dict[str, np.ndarray], calibration: dict) -> dict[str, np.ndarray]:
    """Per calibrated score type, True where an image is flagged OOD (score above its threshold)."""
    return {name: np.asarray(values) > calibration["scores"][name]["threshold"]
            for name, values in scores.items() if name in calibration["scores"]}


def write_calibration(folder: str | Path, calibration: dict) -> Path:
    path = Path(folder) / CALIBRATION_FILE
    atomic_write_text(path, json.dumps(calibration, indent=2) + "\n")
    return path


def read_calibration(path: str | Path) -> dict:
    """calibration.json at `path` (the file or the folder holding it); NoCalibrationError says how to make one."""
    path = Path(path)
    file = path / CALIBRATION_FILE if path.is_dir() or not path.suffix else path
    if not file.is_file():
        raise NoCalibrationError(f"no calibration: {file} does not exist. {HOW_TO_CALIBRATE}")
    return json.loads(file.read_text())


def find_calibration(*folders: str | Path | None) -> dict | None:
    """The first calibration.json in `folders` (None entries skipped), or None."""
    for folder in folders:
        if folder is not None and (Path(folder) / CALIBRATION_FILE).is_file():
            return read_calibration(folder)
    return None


def calibrated_rates(calibration: dict, per_set: dict[str, dict], id_set: str) -> dict:
    """What the calibrated thresholds give on each test set: the ID set's achieved TPR (fraction kept as ID) and each
    OOD set's detection rate (fraction flagged OOD), per calibrated score type present in the sets."""
    rates = {}
    for name, entry in calibration["scores"].items():
        if name not in per_set[id_set]["scores"]:
            continue
        threshold = entry["threshold"]
        row = {"threshold": threshold, "target_tpr": calibration["target_tpr"]}
        for set_name, data in per_set.items():
            values = np.asarray(data["scores"][name], dtype=np.float64)
            if set_name == id_set:
                row["id_tpr"] = float(np.mean(values <= threshold)) if len(values) else None
            else:
                row[f"detected/{set_name}"] = float(np.mean(values > threshold)) if len(values) else None
        rates[name] = row
    return rates
