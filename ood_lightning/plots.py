"""Figures of an evaluation, written as PNG files beside the results.

Two files per score type, however many OOD sets a benchmark has:

    plots/hist_<score>.png   ID vs OOD score histograms, one panel per OOD set (up to 3 panels a row): both
                             distributions on the same bins, as densities, the legend giving the set's AUROC
    plots/roc_<score>.png    ROC curves of every OOD set on one axes (OOD = positive class), AUROC in the legend,
                             with the chance diagonal and the 95%-TPR line that FPR95 (OpenOOD) reads

Histogram bins span the 0.5th-99.5th percentile of the panel's ID and OOD scores together; values beyond are
counted in the edge bins (the x label says so when that happened), so one extreme score cannot squash the rest.
AUROC values are taken from the results table, so figures and table always agree.

Matplotlib is used through `Figure` and the Agg canvas directly: no pyplot, no display, no global state, and the
user's chosen backend is left alone. Files are written atomically.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from ood_lightning.data.presets import ID_SET
from ood_lightning.io import atomic_write, file_stem

PANEL_SIZE = (4.2, 3.2)  # inches per histogram panel
ROC_SIZE = (5.0, 4.4)
DPI = 110
MAX_COLUMNS = 3
BINS = 60  # at most; small sets get about sqrt(n) bins
ID_COLOR, OOD_COLOR = "#1f77b4", "#d62728"


def write_plots(plot_dir: Path, results: dict, per_set: Mapping[str, dict], *, dpi: int = DPI) -> list[Path]:
    """hist_<score>.png and roc_<score>.png for every score type of `results`; returns the paths written. A set
    without one scored image (all unreadable) has nothing to draw and is left out."""
    plot_dir = Path(plot_dir)
    id_scores = per_set[ID_SET]["scores"]
    ood_names = [n for n in results.get("ood_sets", [n for n in per_set if n != ID_SET])
                 if n in per_set and len(per_set[n]["index"])]
    if not ood_names:
        return []
    written = []
    for score, rows in results["scores"].items():
        ood = {name: per_set[name]["scores"][score] for name in ood_names}
        aurocs = {name: rows[name]["auroc"] for name in ood_names if name in rows}
        for kind, figure in (("hist", histogram_figure), ("roc", roc_figure)):
            path = plot_dir / f"{kind}_{file_stem(score)}.png"
            save_figure(figure(id_scores[score], ood, score=score, aurocs=aurocs), path, dpi=dpi)
            written.append(path)
    return written


def histogram_figure(id_scores, ood: Mapping[str, np.ndarray], *, score: str,
                     aurocs: Mapping[str, float] | None = None, panel_size: tuple[float, float] = PANEL_SIZE,
                     bins: int = BINS) -> Figure:
    """One panel per OOD set: ID vs that set's scores on shared bins, as densities; AUROC in the legend title."""
    aurocs = aurocs or {}
    names = list(ood)
    ncols = min(len(names), MAX_COLUMNS)
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    id_scores = np.asarray(id_scores, dtype=np.float64)
    for ax, name in zip(axes.flat, names):
        ood_scores = np.asarray(ood[name], dtype=np.float64)
        edges, clipped = _shared_bins(id_scores, ood_scores, bins)
        for values, label, color in ((id_scores, f"ID (n={id_scores.size})", ID_COLOR),
                                     (ood_scores, f"{name} (n={ood_scores.size})", OOD_COLOR)):
            ax.hist(np.clip(values, edges[0], edges[-1]), bins=edges, density=True, alpha=0.5, color=color,
                    label=label, histtype="stepfilled", edgecolor=color)
        title = f"AUROC {100 * aurocs[name]:.2f}%" if name in aurocs else None
        ax.legend(title=title, fontsize="small", title_fontsize="small")
        ax.set_title(f"{score}: ID vs {name}", fontsize="medium")
        ax.set_xlabel(f"{score} (higher = more OOD)" + ("; tails clipped to 0.5-99.5 pct" if clipped else ""),
                      fontsize="small")
        ax.set_ylabel("density", fontsize="small")
    for ax in axes.flat[len(names):]:
        ax.set_axis_off()
    return fig


def roc_figure(id_scores, ood: Mapping[str, np.ndarray], *, score: str,
               aurocs: Mapping[str, float] | None = None, size: tuple[float, float] = ROC_SIZE) -> Figure:
    """Every OOD set's ROC curve against the ID set on one axes (OOD positive, higher score = OOD)."""
    aurocs = aurocs or {}
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    id_scores = np.asarray(id_scores, dtype=np.float64)
    for name, ood_scores in ood.items():
        ood_scores = np.asarray(ood_scores, dtype=np.float64)
        y = np.r_[np.zeros(id_scores.size), np.ones(ood_scores.size)]
        fpr, tpr, _ = roc_curve(y, np.r_[id_scores, ood_scores])
        label = f"{name} (AUROC {100 * aurocs[name]:.2f}%)" if name in aurocs else name
        ax.plot(fpr, tpr, label=label, linewidth=1.5)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="chance")
    ax.axhline(0.95, color="grey", linestyle=":", linewidth=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="FPR: ID flagged as OOD", ylabel="TPR: OOD detected",
           title=f"ROC, score {score}")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def save_figure(fig: Figure, path: Path, *, dpi: int = DPI) -> None:
    """Render to PNG in memory, then write atomically (a half-written PNG never replaces a good one)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write(Path(path), lambda f: f.write(buf.getvalue()))


def _shared_bins(a: np.ndarray, b: np.ndarray, bins: int) -> tuple[np.ndarray, bool]:
    """Bin edges over the 0.5-99.5th percentile of both arrays together, and whether any value lies outside."""
    both = np.r_[a, b]
    both = both[np.isfinite(both)]
    if both.size == 0:
        return np.linspace(-0.5, 0.5, bins + 1), False
    lo, hi = np.percentile(both, [0.5, 99.5])
    if not hi > lo:
        lo, hi = both.min(), both.max()
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = int(np.clip(np.sqrt(both.size), 10, bins))  # fewer bins for small sets (square-root rule)
    return np.linspace(lo, hi, bins + 1), bool((both < lo).any() or (both > hi).any())
