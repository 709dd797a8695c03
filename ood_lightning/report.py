"""Results: per-sample scores -> metric table -> files a person can read and a program can re-use.

An evaluation folder holds:

    results.json         everything: run identity (config_hash, checkpoint), sample counts, wall time, and per score
                         type per OOD set (and near/far group) auroc, aupr_in, aupr_out, fpr95, fpr95_openood,
                         n_id, n_ood, n_skipped
    results.csv          one row per (score type, OOD set or group), metrics in percent (auroc_percent, ...)
    results.md           the same table (AUROC %, ...), with links to the plots
    scores/<set>.npz     per-sample arrays of each test set (see `save_scores`): enough to recompute everything
    plots/*.png          score histograms and ROC curves (see plots.py)

Units: every table a person reads (results.csv, results.md, the console, W&B's results table) gives metrics in
percent, as papers do, and says so in each column header. results.json keeps fractions in [0, 1]: it is the
record programs read, under the same metric names and values as the metrics logged to Lightning's loggers
(test/<set>/<score>/auroc, ...).

`rescore` rebuilds the tables and plots from scores/*.npz alone, without the model (evaluate.py --from_scores).
Every file is written atomically (temporary name, then rename), so an interrupted run never leaves half a table.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import warnings
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ood_lightning.data.presets import ID_SET
from ood_lightning.io import atomic_write, atomic_write_text, file_stem
from ood_lightning.metrics import METRICS, group_means, ood_metrics

PERCENT_COLUMNS = {metric: f"{metric}_percent" for metric in METRICS}  # results.json key -> results.csv header
COUNTS = ("n_id", "n_ood", "n_skipped")
COLUMNS = ("score", "ood_set", *PERCENT_COLUMNS.values(), *COUNTS)
SCORES_DIR = "scores"
PLOTS_DIR = "plots"


# ----------------------------------------------------------------------------------------------- run identity
# Keys that say where a run writes or how it is executed, not what is scored: left out of config_hash, so one
# evaluation on 1 or 8 GPUs, with or without W&B, into any folder, has one hash (the results folder, --results_dir,
# is a top-level option outside the hashed sections). ("devices" and "num_nodes" do change a *training* run's
# global batch; config.yaml beside the results records them.)
_EXECUTION_KEYS = {
    "trainer": {"accelerator", "strategy", "devices", "num_nodes", "logger", "callbacks", "default_root_dir",
                "enable_progress_bar", "enable_model_summary", "enable_checkpointing", "log_every_n_steps",
                "profiler", "num_sanity_val_steps", "barebones", "detect_anomaly", "model_registry",
                "enable_autolog_hparams", "plugins"},
    "model": {"cache_dir"},
    "data": {"num_workers"},
    None: {"ckpt_path", "config"},  # top level; the checkpoint is recorded separately in results.json
}


def config_hash(config: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit sha256 prefix of a resolved run config (the dict behind config.yaml).

    Canonical JSON (sorted keys); execution-only keys (`_EXECUTION_KEYS`: output folders, device counts, loggers,
    worker counts) are dropped first, at any depth of their section. Values JSON cannot hold are reduced to
    stable text (paths as strings, other objects by their type name), never to a repr with a memory address.
    """
    def strip(value, drop: set[str]):
        if isinstance(value, Mapping):
            return {str(k): strip(v, drop) for k, v in value.items() if k not in drop}
        if isinstance(value, (list, tuple)):
            return [strip(v, drop) for v in value]
        return value

    cleaned = {}
    for section, value in config.items():
        if section in _EXECUTION_KEYS[None]:
            continue
        cleaned[str(section)] = strip(value, _EXECUTION_KEYS.get(section, set()))
    text = json.dumps(cleaned, sort_keys=True, separators=(",", ":"), default=_stable_text)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stable_text(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(map(str, value))
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


# ------------------------------------------------------------------------------------------------- the table
def build_results(
    per_set: Mapping[str, dict],
    *,
    benchmark: str,
    detector: str,
    groups: Mapping[str, Sequence[str]],
    wall_time: float | None,
    extra: Mapping | None = None,
) -> dict:
    """Metrics of every score type on every OOD set against the ID test set, plus near/far group means.

    `per_set` maps test-set name -> ScoreCollector.compute() output (or `load_scores` output); the ID set is named
    "id", the others keep their order. Group rows (unweighted means over their sets, as OpenOOD) follow the sets;
    their n_ood and n_skipped are sums; a group member that is not an OOD set here is an error (`group_means`).
    `extra` (e.g. config_hash, checkpoint) is stored after the run identity.
    `wall_time` None (unknown) leaves wall time and throughput null.
    """
    if ID_SET not in per_set:
        raise ValueError(f"no in-distribution test set named {ID_SET!r} among {list(per_set)}")
    id_set = per_set[ID_SET]
    ood_sets = [name for name in per_set if name != ID_SET]
    clash = sorted(set(groups) & set(per_set))
    if clash:
        raise ValueError(f"group name(s) {clash} are also test-set names; rename the group or the set")
    groups = {g: [n for n in members] for g, members in groups.items()}
    score_names = list(id_set["scores"])
    n_images = sum(len(s["index"]) for s in per_set.values())
    results = {
        "benchmark": benchmark,
        "detector": detector,
        **(extra or {}),
        "n_id": len(id_set["index"]),
        "n_skipped": {name: int(s["n_skipped"]) for name, s in per_set.items()},
        "ood_sets": ood_sets,
        "groups": groups,
        "wall_time_s": None if wall_time is None else round(wall_time, 3),
        "images_per_s": round(n_images / wall_time, 2) if wall_time else None,
        "scores": {},
    }
    for score in score_names:
        rows = {}
        for name in ood_sets:
            s = per_set[name]
            id_scores, ood_scores = id_set["scores"][score], s["scores"][score]
            if len(id_scores) and len(ood_scores):
                rows[name] = ood_metrics(id_scores, ood_scores)
            else:  # nothing readable in a set: a row without metrics, its skipped images counted
                rows[name] = {**dict.fromkeys(METRICS), "n_id": len(id_scores), "n_ood": len(ood_scores)}
            rows[name]["n_skipped"] = int(s["n_skipped"])
        for group, row in group_means(rows, groups).items():
            row["n_skipped"] = sum(rows[n]["n_skipped"] for n in groups[group])
            rows[group] = row
        results["scores"][score] = rows
    return results


def table_rows(results: dict) -> list[dict]:
    """One row per (score type, OOD set or group) under COLUMNS: metrics in percent, None where a set has none."""
    rows = []
    for score, sets in results["scores"].items():
        for ood_set, m in sets.items():
            percent = {column: None if m.get(metric) is None else 100 * m[metric]
                       for metric, column in PERCENT_COLUMNS.items()}
            rows.append({"score": score, "ood_set": ood_set, **percent, **{c: m.get(c) for c in COUNTS}})
    return rows


def markdown_table(results: dict) -> str:
    """The table people read: metrics in percent (headers say so), both FPR95 conventions named."""
    head = ["score", "OOD set", "AUROC %", "AUPR-In %", "AUPR-Out %", "FPR95 % (ID 95%)", "FPR95 % (OpenOOD)", "n OOD"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table_rows(results):
        cells = ["n/a" if r[c] is None else f"{r[c]:.2f}" for c in PERCENT_COLUMNS.values()]
        lines.append(f"| {r['score']} | {r['ood_set']} | " + " | ".join(cells) + f" | {r['n_ood']} |")
    return "\n".join(lines) + "\n"


def markdown_report(results: dict, plots: Iterable[Path] = (), out_dir: Path | None = None) -> str:
    """results.md: a header naming the run, the table, what the two FPR95 columns mean, and the plots."""
    wall = results.get("wall_time_s")
    speed = f"; {wall:.1f} s ({results.get('images_per_s')} images/s)" if wall is not None else ""
    checkpoint = results.get("checkpoint")
    checkpoint = f"checkpoint `{checkpoint}`" if checkpoint else "no checkpoint file (the weights in memory)"
    lines = [
        f"# {results['detector']} on {results['benchmark']}",
        "",
        f"{results['n_id']} ID test images; config `{results.get('config_hash')}`; {checkpoint}{speed}.",
        "",
        markdown_table(results),
        "Scores: higher = more OOD; metrics in percent. FPR95 (ID 95%): OOD accepted as ID at the threshold that "
        "keeps 95% of ID (ODIN/energy, the LFDN and DiffGuard papers). FPR95 (OpenOOD): ID flagged as OOD at the "
        "threshold that catches 95% of OOD (OpenOOD v1.5). Group rows are unweighted means over their sets.",
    ]
    skipped = {k: v for k, v in results["n_skipped"].items() if v}
    if skipped:
        lines += ["", f"Unreadable images skipped (not scored): {skipped}."]
    plots = list(plots)
    if plots:
        lines += ["", "## Plots", ""]
        for path in plots:
            rel = path.relative_to(out_dir) if out_dir is not None else path
            lines.append(f"![{path.stem}]({rel.as_posix()})")
    return "\n".join(lines) + "\n"


def print_results(results: dict, out_dir: Path) -> None:
    wall = results.get("wall_time_s")
    print(
        f"\n{results['detector']} on {results['benchmark']}: {results['n_id']} ID test images"
        + (f", {wall:.1f} s" if wall is not None else "")
        + f", config {results.get('config_hash')}\n"
    )
    print(markdown_table(results))
    skipped = {k: v for k, v in results["n_skipped"].items() if v}
    if skipped:
        print(f"unreadable images skipped: {skipped}")
    print(f"results written to {out_dir}/results.{{json,csv,md}}, per-sample scores to {out_dir}/{SCORES_DIR}/")


def print_calibrated(results: dict) -> None:
    """What the calibrated thresholds (results.json "calibrated") give: ID TPR reached, each OOD set's detection."""
    calibrated = results.get("calibrated")
    if not calibrated:
        return
    print(f"\nAt the calibrated thresholds ({calibrated['file']}; target ID TPR {calibrated['target_tpr']}):")
    for score, row in calibrated["scores"].items():
        detected = ", ".join(f"{key.split('/', 1)[1]} {_percent(value)}" for key, value in row.items()
                             if key.startswith("detected/"))
        print(f"  {score}: threshold {row['threshold']:.6g}; ID test kept {_percent(row.get('id_tpr'))}; "
              f"OOD detected: {detected}")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


# ------------------------------------------------------------------------------------------------- the files
def write_results(
    out_dir: Path, results: dict, per_set: Mapping[str, dict], *, scores: bool = True, plots: bool = True
) -> list[Path]:
    """results.json / .csv / .md, scores/<set>.npz (unless `scores` is False) and plots/*.png.

    Returns the plot files written. A plotting error is a warning: the tables are already on disk then.
    """
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table_rows(results))
    atomic_write_text(out_dir / "results.csv", buf.getvalue())
    if scores:
        save_scores(out_dir / SCORES_DIR, per_set)
    written: list[Path] = []
    if plots:
        try:
            from ood_lightning.plots import write_plots

            written = write_plots(out_dir / PLOTS_DIR, results, per_set)
        except Exception as err:  # the tables matter more than the figures
            warnings.warn(f"plots not written ({type(err).__name__}: {err})", stacklevel=2)
    atomic_write_text(out_dir / "results.md", markdown_report(results, written, out_dir))
    return written


def save_scores(scores_dir: Path, per_set: Mapping[str, dict]) -> None:
    """scores/<set>.npz per test set, holding

    name (the set's name), index (int64 dataset indices, sorted, unique), scores (the score types, in order),
    score_<type> (float64, one per score type), n_skipped (unreadable samples), and when collected
    label (int64 class label, -1 for OOD / unknown), path (each sample's file, or '<set>#<position>' for
    in-memory sets; when the evaluation knows them), extras (their names) and extra_<name> (detector extras such
    as predictions). Arrays are aligned with index. Every key that starts with "score_" is a score array.
    Plain arrays only: np.load needs no pickle.
    """
    stems = {name: file_stem(name) for name in per_set}
    if len(set(stems.values())) != len(stems):
        raise ValueError(f"test-set names collide as file names: {stems}")
    for name, s in per_set.items():
        arrays = {
            "name": np.array(name),
            "index": np.asarray(s["index"], dtype=np.int64),
            "scores": np.array(list(s["scores"]), dtype=str),
            **{f"score_{k}": np.asarray(v, dtype=np.float64) for k, v in s["scores"].items()},
            "n_skipped": np.array(int(s["n_skipped"]), dtype=np.int64),
        }
        if s.get("paths") is not None:
            arrays["path"] = np.array(list(s["paths"]), dtype=str)
        if s.get("labels") is not None:
            arrays["label"] = np.asarray(s["labels"], dtype=np.int64)
        if s.get("extras"):
            arrays["extras"] = np.array(list(s["extras"]), dtype=str)
            arrays.update({f"extra_{k}": np.asarray(v) for k, v in s["extras"].items()})
        atomic_write(Path(scores_dir) / f"{stems[name]}.npz", lambda f, a=arrays: np.savez(f, **a))


def load_scores(scores_dir: Path, order: Sequence[str] = (), skipped: Mapping[str, int] | None = None
                ) -> dict[str, dict]:
    """The inverse of `save_scores`: {set name: {"index", "scores", "n_skipped"[, "labels", "extras"]}}.

    Sets come in `order` first (e.g. the OOD sets as results.json lists them), then the rest sorted by name, "id"
    always first. Files of the first format (only index and score_<type>) still load: the set is named after the
    file and its skip count comes from `skipped` (results.json's "n_skipped"), else 0.
    """
    scores_dir = Path(scores_dir)
    files = sorted(scores_dir.glob("*.npz"))
    if not files:
        raise FileNotFoundError(
            f"no per-sample scores in {scores_dir}: rebuilding results needs the scores/<set>.npz files that an "
            "evaluation writes beside results.json; run evaluate.py (without --from_scores) first")
    per_set = {}
    for path in files:
        try:
            name, entry = _read_score_file(path, skipped)
        except ValueError as e:
            if "allow_pickle" not in str(e):
                raise
            raise ValueError(
                f"refusing to read {path}: it holds an array of Python objects, which only pickle can load and which "
                "could run code while loading. Score files written by evaluate.py hold plain numbers and strings; "
                "rewrite this one so.") from None
        per_set[name] = entry
    rank = {name: i for i, name in enumerate([ID_SET, *order])}
    return dict(sorted(per_set.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0] != ID_SET, kv[0])))


def _read_score_file(path: Path, skipped: Mapping[str, int] | None) -> tuple[str, dict]:
    """One scores/<set>.npz as (set name, entry of `load_scores`)."""
    with np.load(path, allow_pickle=False) as z:
        if "index" not in z:
            raise ValueError(f"{path} holds no 'index' array: not a per-sample score file")
        name = str(z["name"]) if "name" in z else path.stem
        types = [str(k) for k in z["scores"]] if "scores" in z else \
            [k[len("score_"):] for k in z.files if k.startswith("score_")]
        entry = {
            "index": z["index"].astype(np.int64),
            "scores": {k: z[f"score_{k}"].astype(np.float64) for k in types},
            "n_skipped": int(z["n_skipped"]) if "n_skipped" in z else int((skipped or {}).get(name, 0)),
        }
        if "label" in z:
            entry["labels"] = z["label"].astype(np.int64)
        if "path" in z:
            entry["paths"] = [str(p) for p in z["path"]]
        if "extras" in z:
            entry["extras"] = {str(k): z[f"extra_{k}"] for k in z["extras"]}
    return name, entry


def rescore(
    results_dir: str | Path,
    *,
    out_dir: str | Path | None = None,
    scores: Sequence[str] | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
    plots: bool = True,
    quiet: bool = False,
) -> dict:
    """Rebuild results.json/csv/md and plots from an evaluation folder's scores/*.npz, without any model.

    Args:
        results_dir: a folder written by an evaluation (holds scores/<set>.npz and usually results.json).
        out_dir: where to write; default `results_dir` itself (its npz files are left as they are). Another folder
            gets copies of the npz files too, so it is complete on its own.
        scores: keep only these score types (default: all in the npz files).
        groups: near/far groups {group: [set, ...]}; default: those of the previous results.json (none without it).
        plots: write plots/*.png.

    Run identity (benchmark, detector, config_hash, checkpoint), the original wall time and the entries a detector
    added (e.g. CascadeFusion's "fusion") come from the previous results.json when it exists, as does the order of
    the OOD sets; "rescored_from" records the source folder.
    """
    results_dir = Path(results_dir)
    out = Path(out_dir) if out_dir is not None else results_dir
    previous_path = results_dir / "results.json"
    previous = json.loads(previous_path.read_text()) if previous_path.is_file() else {}
    # The set order is results.json's "ood_sets"; a results.json written before that key existed (first format)
    # listed its sets only as the keys of "n_skipped", in the order they were tested.
    order = previous["ood_sets"] if "ood_sets" in previous else list(previous.get("n_skipped", ()))
    per_set = load_scores(results_dir / SCORES_DIR, order=order, skipped=previous.get("n_skipped"))
    if ID_SET not in per_set:
        raise FileNotFoundError(f"{results_dir / SCORES_DIR} has no {ID_SET}.npz (the in-distribution scores)")
    selected = per_set
    if scores is not None:
        available = list(per_set[ID_SET]["scores"])
        unknown = [s for s in scores if s not in available]
        if unknown or not scores:
            raise ValueError(f"score type(s) {unknown or scores} not in {results_dir}; available: {available}")
        selected = {name: {**s, "scores": {k: s["scores"][k] for k in scores}} for name, s in per_set.items()}
    keep = ("config_hash", "checkpoint", "world_size")
    extra = {k: previous[k] for k in keep if k in previous}
    extra["rescored_from"] = str(results_dir)
    results = build_results(
        selected,
        benchmark=previous.get("benchmark", "unknown"),
        detector=previous.get("detector", "unknown"),
        groups=previous.get("groups", {}) if groups is None else groups,
        wall_time=previous.get("wall_time_s"),
        extra=extra,
    )
    # Entries a detector added (CascadeFusion's "fusion" block) describe the run, not the table: kept as they were.
    results.update({key: value for key, value in previous.items() if key not in results})
    same_dir = out.resolve() == results_dir.resolve()
    write_results(out, results, per_set, scores=not same_dir, plots=plots)
    if not quiet:
        print_results(results, out)
    return results
