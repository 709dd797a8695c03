"""Plots: files per score type, readable PNGs of the documented layout, figures that show the data, atomic writes,
and results.md linking them (a plotting failure only warns)."""
import matplotlib.image
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ood_lightning import plots, report


def _per_set(n_ood_sets: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    per_set = {"id": {"index": np.arange(50), "scores": {"mse": rng.normal(0, 1, 50), "a/b": rng.normal(0, 1, 50)},
                      "n_skipped": 0}}
    for k in range(n_ood_sets):
        n = 30 + k
        per_set[f"ood{k}"] = {"index": np.arange(n), "n_skipped": 0,
                              "scores": {"mse": rng.normal(1 + k, 1, n), "a/b": rng.normal(-1, 1, n)}}
    return per_set


def _results(per_set):
    return report.build_results(per_set, benchmark="toy", detector="Toy", groups={}, wall_time=1.0)


def test_two_files_per_score_type_readable_pngs(tmp_path):
    per_set = _per_set(4)
    written = plots.write_plots(tmp_path, _results(per_set), per_set, dpi=40)
    names = sorted(p.name for p in written)
    assert names == ["hist_a_b.png", "hist_mse.png", "roc_a_b.png", "roc_mse.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # nothing else, no temporary files
    for path in written:
        assert path.stat().st_size > 0
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[2] in (3, 4)
        assert image[..., :3].std() > 0.01  # not a blank canvas
    hist = matplotlib.image.imread(tmp_path / "hist_mse.png")
    roc = matplotlib.image.imread(tmp_path / "roc_mse.png")
    # 4 OOD sets: 2 rows of at most 3 panels, so wider than one ROC axes and about 2 panels high
    assert hist.shape[1] > roc.shape[1]


@pytest.mark.parametrize("n_sets, rows, cols", [(1, 1, 1), (2, 1, 2), (3, 1, 3), (4, 2, 3), (7, 3, 3)])
def test_histogram_layout_and_pixel_size(tmp_path, n_sets, rows, cols):
    per_set = _per_set(n_sets)
    ood = {k: v["scores"]["mse"] for k, v in per_set.items() if k != "id"}
    fig = plots.histogram_figure(per_set["id"]["scores"]["mse"], ood, score="mse", panel_size=(2.0, 1.5))
    assert sum(ax.get_visible() and ax.axison for ax in fig.axes) == n_sets
    path = tmp_path / "h.png"
    plots.save_figure(fig, path, dpi=50)
    height, width = matplotlib.image.imread(path).shape[:2]
    assert (height, width) == (rows * 1.5 * 50, cols * 2.0 * 50)


def test_histogram_shows_both_sets_on_shared_bins_with_auroc():
    rng = np.random.default_rng(1)
    id_s, ood_s = rng.normal(0, 1, 200), rng.normal(2, 1, 150)
    ood_s[0] = 1e9  # one extreme value must not squash the figure
    auroc = roc_auc_score(np.r_[np.zeros(200), np.ones(150)], np.r_[id_s, ood_s])
    fig = plots.histogram_figure(id_s, {"far": ood_s}, score="mse", aurocs={"far": auroc})
    ax = fig.axes[0]
    id_patch, ood_patch = ax.patches[:2]
    # stepfilled histograms: the two polygons span the same bin range
    id_x, ood_x = id_patch.get_xy()[:, 0], ood_patch.get_xy()[:, 0]
    assert id_x.min() == pytest.approx(ood_x.min()) and id_x.max() == pytest.approx(ood_x.max())
    assert ood_x.max() < 100  # range from the 0.5-99.5th percentiles, not the 1e9 outlier
    assert "clipped" in ax.get_xlabel()
    legend = ax.get_legend()
    assert legend.get_title().get_text() == f"AUROC {100 * auroc:.2f}%"
    assert [t.get_text() for t in legend.get_texts()] == ["ID (n=200)", "far (n=150)"]
    # densities: each histogram integrates to 1 over the bins
    for patch in (id_patch, ood_patch):
        xy = patch.get_xy()
        area = np.trapezoid(xy[:, 1], xy[:, 0]) if hasattr(np, "trapezoid") else np.trapz(xy[:, 1], xy[:, 0])
        assert abs(area) == pytest.approx(1.0, rel=1e-6)


def test_roc_curves_all_sets_on_one_axes():
    per_set = _per_set(3)
    ood = {k: v["scores"]["mse"] for k, v in per_set.items() if k != "id"}
    fig = plots.roc_figure(per_set["id"]["scores"]["mse"], ood, score="mse", aurocs={"ood1": 0.75})
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:3] == ["ood0", "ood1 (AUROC 75.00%)", "ood2"] and "chance" in labels
    for line in ax.get_lines()[:3]:
        x, y = line.get_xdata(), line.get_ydata()
        assert (x[0], y[0]) == (0, 0) and (x[-1], y[-1]) == (1, 1)
        assert np.all(np.diff(x) >= 0) and np.all(np.diff(y) >= 0)
        # area under the drawn curve = AUROC computed independently
        name = line.get_label().split(" ")[0]
        ids = per_set["id"]["scores"]["mse"]
        expected = roc_auc_score(np.r_[np.zeros(ids.size), np.ones(ood[name].size)], np.r_[ids, ood[name]])
        area = np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2)
        assert area == pytest.approx(expected, abs=1e-12)


def test_results_md_links_plots_and_plot_failure_only_warns(tmp_path, monkeypatch):
    per_set = _per_set(2)
    written = report.write_results(tmp_path, _results(per_set), per_set)
    assert {p.name for p in written} == {"hist_mse.png", "roc_mse.png", "hist_a_b.png", "roc_a_b.png"}
    md = (tmp_path / "results.md").read_text()
    assert "![roc_mse](plots/roc_mse.png)" in md and "![hist_a_b](plots/hist_a_b.png)" in md

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(plots, "write_plots", broken)
    out = tmp_path / "again"
    with pytest.warns(UserWarning, match="plots not written.*no fonts"):
        assert report.write_results(out, _results(per_set), per_set) == []
    assert (out / "results.json").is_file() and "## Plots" not in (out / "results.md").read_text()
