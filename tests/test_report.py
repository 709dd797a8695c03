"""Results files from hand-made per-sample scores: schema, CSV/Markdown tables, npz contents, atomic writes,
config hashes, and rebuilding everything from the npz files (report.rescore / evaluate.py --from_scores)."""
import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ood_lightning import report

SCORES = ("energy", "dist")
METRIC_KEYS = {"auroc", "aupr_in", "aupr_out", "fpr95", "fpr95_openood", "n_id", "n_ood", "n_skipped"}


def _fake_per_set(seed: int = 0) -> dict:
    """ID set of 40 and OOD sets a (30), b (25), c (20), each at a different distance from ID."""
    rng = np.random.default_rng(seed)

    def entry(n, shift, skipped, label):
        return {
            "index": np.arange(n, dtype=np.int64),
            "scores": {"energy": rng.normal(shift, 1.0, n), "dist": rng.normal(2 * shift, 3.0, n)},
            "n_skipped": skipped,
            "labels": np.full(n, label, dtype=np.int64) if label is not None else rng.integers(0, 5, n),
            "extras": {"prediction": rng.integers(0, 5, n)},
        }

    return {"id": entry(40, 0.0, 1, None), "a": entry(30, 0.5, 0, -1), "b": entry(25, 1.5, 2, -1),
            "c": entry(20, 4.0, 3, -1)}


GROUPS = {"near": ["a", "b"], "far": ["c"]}


def _results(per_set, **kw):
    return report.build_results(per_set, benchmark="toy", detector="Toy", groups=GROUPS, wall_time=2.0,
                                extra={"config_hash": "abc", "checkpoint": None}, **kw)


def test_results_schema_and_values():
    per_set = _fake_per_set()
    res = _results(per_set)
    for key in ("benchmark", "detector", "config_hash", "checkpoint", "n_id", "n_skipped", "ood_sets", "groups",
                "wall_time_s", "images_per_s", "scores"):
        assert key in res, key
    assert res["n_id"] == 40
    assert res["ood_sets"] == ["a", "b", "c"]
    assert res["n_skipped"] == {"id": 1, "a": 0, "b": 2, "c": 3}
    assert res["images_per_s"] == pytest.approx((40 + 30 + 25 + 20) / 2.0)
    assert list(res["scores"]) == list(SCORES)
    for score in SCORES:
        rows = res["scores"][score]
        assert list(rows) == ["a", "b", "c", "near", "far"]  # sets in order, then groups
        for name in ("a", "b", "c"):
            assert set(rows[name]) == METRIC_KEYS
            ood = per_set[name]["scores"][score]
            idd = per_set["id"]["scores"][score]
            expected = roc_auc_score(np.r_[np.zeros(idd.size), np.ones(ood.size)], np.r_[idd, ood])
            assert rows[name]["auroc"] == pytest.approx(expected, abs=1e-12)
            assert (rows[name]["n_id"], rows[name]["n_ood"]) == (40, ood.size)
        assert rows["near"]["auroc"] == pytest.approx((rows["a"]["auroc"] + rows["b"]["auroc"]) / 2, abs=1e-12)
        assert rows["near"]["n_ood"] == 55 and rows["near"]["n_skipped"] == 2
        assert rows["far"]["auroc"] == pytest.approx(rows["c"]["auroc"]) and rows["far"]["n_skipped"] == 3
        assert set(rows["near"]) == METRIC_KEYS
    json.dumps(res)  # plain JSON types only


def test_group_name_clashing_with_a_set_is_an_error():
    with pytest.raises(ValueError, match="also test-set names"):
        report.build_results(_fake_per_set(), benchmark="t", detector="T", groups={"a": ["b"]}, wall_time=1.0)


def test_files_csv_markdown_and_npz(tmp_path):
    per_set = _fake_per_set()
    res = _results(per_set)
    plots = report.write_results(tmp_path, res, per_set, plots=False)
    assert plots == []
    assert json.loads((tmp_path / "results.json").read_text()) == res

    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["score", "ood_set", "auroc_percent", "aupr_in_percent", "aupr_out_percent",
                             "fpr95_percent", "fpr95_openood_percent", "n_id", "n_ood", "n_skipped"]
    assert len(rows) == len(SCORES) * 5
    near = next(r for r in rows if r["score"] == "dist" and r["ood_set"] == "near")
    assert float(near["auroc_percent"]) == pytest.approx(100 * res["scores"]["dist"]["near"]["auroc"], abs=1e-10)

    md = (tmp_path / "results.md").read_text()
    assert md.startswith("# Toy on toy")
    assert "FPR95 (ID 95%)" in md and "FPR95 (OpenOOD)" in md and "`abc`" in md
    auroc_b = 100 * res["scores"]["energy"]["b"]["auroc"]
    assert f"| energy | b | {auroc_b:.2f} |" in md
    assert "## Plots" not in md

    for name, s in per_set.items():
        with np.load(tmp_path / "scores" / f"{name}.npz", allow_pickle=False) as z:
            assert set(z.files) == {"name", "index", "scores", "score_energy", "score_dist", "n_skipped",
                                    "label", "extras", "extra_prediction"}
            assert str(z["name"]) == name
            assert list(z["scores"]) == list(SCORES)
            assert sorted(k for k in z.files if k.startswith("score_")) == ["score_dist", "score_energy"]
            np.testing.assert_array_equal(z["index"], s["index"])
            np.testing.assert_array_equal(z["score_dist"], s["scores"]["dist"])
            np.testing.assert_array_equal(z["label"], s["labels"])
            np.testing.assert_array_equal(z["extra_prediction"], s["extras"]["prediction"])
            assert int(z["n_skipped"]) == s["n_skipped"]


def test_odd_set_names_get_safe_file_names(tmp_path):
    per_set = _fake_per_set()
    per_set["open images/v2"] = per_set.pop("c")
    report.save_scores(tmp_path, per_set)
    assert (tmp_path / "open_images_v2.npz").is_file()
    assert "open images/v2" in report.load_scores(tmp_path)
    with pytest.raises(ValueError, match="collide"):
        report.save_scores(tmp_path, {"a/b": per_set["a"], "a b": per_set["b"]})


def test_atomic_write_keeps_previous_file_when_the_writer_dies(tmp_path):
    path = tmp_path / "results.json"
    report.atomic_write_text(path, '{"good": 1}\n')

    def dies_half_way(f):
        f.write(b'{"half": ')
        raise KeyboardInterrupt  # e.g. Ctrl-C or a kill in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        report.atomic_write(path, dies_half_way)
    assert path.read_text() == '{"good": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind


def test_config_hash():
    base = {"seed_everything": 0, "model": {"class_path": "x.Y", "init_args": {"lr": 1e-3, "cache_dir": "a"}},
            "data": {"benchmark": "digits", "num_workers": 0}, "trainer": {"max_epochs": 3, "devices": 1}}
    h = report.config_hash(base)
    assert len(h) == 16 and int(h, 16) >= 0
    reordered = {"trainer": {"devices": 1, "max_epochs": 3}, "data": {"num_workers": 0, "benchmark": "digits"},
                 "model": {"init_args": {"cache_dir": "a", "lr": 1e-3}, "class_path": "x.Y"}, "seed_everything": 0}
    assert report.config_hash(reordered) == h
    # where features are cached / how many processes run: same hash
    moved = json.loads(json.dumps(base))
    moved["model"]["init_args"]["cache_dir"] = "elsewhere"
    moved["data"]["num_workers"] = 8
    moved["trainer"]["devices"] = 4
    assert report.config_hash(moved) == h
    # what is scored: another hash
    for path, value in ((("model", "init_args", "lr"), 1e-4), (("data", "benchmark"), "cifar10_jpeg"),
                        (("trainer", "max_epochs"), 4), (("seed_everything",), 1)):
        changed = json.loads(json.dumps(base))
        target = changed
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        assert report.config_hash(changed) != h, path
    # the documented canonical form: sorted-key compact JSON, sha256, first 16 hex digits
    assert report.config_hash({"model": {"b": 1, "a": Path("/x")}}) == \
        hashlib.sha256(b'{"model":{"a":"/x","b":1}}').hexdigest()[:16]
    # objects without a JSON form hash by type, never by memory address
    assert report.config_hash({"model": {"o": object()}}) == report.config_hash({"model": {"o": object()}})


def test_rescore_reproduces_results_and_selects_scores(tmp_path):
    per_set = _fake_per_set()
    res = _results(per_set)
    report.write_results(tmp_path, res, per_set, plots=False)
    (tmp_path / "results.json").rename(tmp_path / "original.json")
    report.atomic_write_text(tmp_path / "results.json", json.dumps(res))

    again = report.rescore(tmp_path, plots=False, quiet=True)
    assert again["scores"] == res["scores"]  # exactly: float64 scores were stored exactly
    for key in ("benchmark", "detector", "config_hash", "ood_sets", "groups", "n_skipped", "wall_time_s"):
        assert again[key] == res[key], key
    assert again["rescored_from"] == str(tmp_path)
    npz_before = {p.name: p.read_bytes() for p in (tmp_path / "scores").iterdir()}

    out = tmp_path / "only_dist"
    sub = report.rescore(tmp_path, out_dir=out, scores=["dist"], groups={"all": ["a", "b", "c"]}, plots=False,
                         quiet=True)
    assert list(sub["scores"]) == ["dist"]
    assert list(sub["scores"]["dist"]) == ["a", "b", "c", "all"]
    assert sub["scores"]["dist"]["b"] == res["scores"]["dist"]["b"]
    written = json.loads((out / "results.json").read_text())
    assert written["scores"] == sub["scores"]
    # the new folder is complete on its own (every score kept in its npz), the source npz files are untouched
    assert report.load_scores(out / "scores")["a"]["scores"].keys() == {"energy", "dist"}
    assert {p.name: p.read_bytes() for p in (tmp_path / "scores").iterdir()} == npz_before

    with pytest.raises(ValueError, match="not in .*available"):
        report.rescore(tmp_path, scores=["nope"], plots=False, quiet=True)


def test_rescore_keeps_the_set_order_and_the_detectors_entries(tmp_path):
    per_set = _fake_per_set()
    per_set = {"id": per_set["id"], "c": per_set["c"], "a": per_set["a"], "b": per_set["b"]}  # not sorted by name
    res = _results(per_set)
    res["n_skipped"] = dict(sorted(res["n_skipped"].items()))  # a dict whose order says nothing (as JSON may give)
    res["fusion"] = {"low": 0.5, "high": 1.5, "tiers": {"a": {"band": 3}}}  # a detector's own block
    report.write_results(tmp_path, res, per_set, plots=False)
    again = report.rescore(tmp_path, out_dir=tmp_path / "again", plots=False, quiet=True)
    assert again["ood_sets"] == ["c", "a", "b"] and list(again["scores"]["dist"])[:3] == ["c", "a", "b"]
    assert again["fusion"] == res["fusion"]
    assert json.loads((tmp_path / "again" / "results.json").read_text())["fusion"] == res["fusion"]


def test_rescore_without_results_json_or_npz(tmp_path):
    per_set = _fake_per_set()
    report.save_scores(tmp_path / "scores", per_set)
    res = report.rescore(tmp_path, plots=False, quiet=True)  # no results.json: no groups, unknown wall time
    assert res["ood_sets"] == ["a", "b", "c"] and res["groups"] == {} and res["wall_time_s"] is None
    assert list(res["scores"]["energy"]) == ["a", "b", "c"]
    with pytest.raises(FileNotFoundError, match="run evaluate.py"):
        report.rescore(tmp_path / "empty", quiet=True)


def test_evaluate_from_scores_skips_the_model(tmp_path, monkeypatch):
    import evaluate
    import ood_lightning.cli

    per_set = _fake_per_set()
    report.write_results(tmp_path, _results(per_set), per_set, plots=False)

    def no_model(*args, **kwargs):
        raise AssertionError("--from_scores must not build a model")

    monkeypatch.setattr(ood_lightning.cli, "make_cli", no_model)
    out = tmp_path / "rescored"
    evaluate.main(["--from_scores", str(tmp_path), "--scores", "[energy]", "--out_dir", str(out),
                   "--plots", "false"])
    res = json.loads((out / "results.json").read_text())
    assert list(res["scores"]) == ["energy"]
    assert list(res["scores"]["energy"]) == ["a", "b", "c", "near", "far"]  # groups from the earlier results.json
    assert not (out / "plots").exists()


def test_evaluate_from_scores_refuses_a_group_member_that_is_no_test_set(tmp_path):
    """Issue 15: `--groups '{near: [tinn]}'` wrote no group row, no warning, and stored the bad group."""
    import evaluate

    per_set = _fake_per_set()
    report.write_results(tmp_path, _results(per_set), per_set, plots=False)
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(ValueError, match=r"group 'near' lists tinn, not among the test sets of this run\. "
                                         r"The OOD test sets are: a, b, c$"):
        evaluate.main(["--from_scores", str(tmp_path), "--groups", "{near: [tinn], far: [c]}", "--plots", "false"])
    assert (tmp_path / "results.json").read_text() == before  # nothing rewritten


def test_rescore_reads_first_format_npz(tmp_path):
    """Folders written before labels/names were stored (index + score_<type> only) can still be rescored."""
    per_set = _fake_per_set()
    (tmp_path / "scores").mkdir()
    for name, s in per_set.items():
        np.savez(tmp_path / "scores" / f"{name}.npz", index=s["index"],
                 **{f"score_{k}": v for k, v in s["scores"].items()})
    old = {"benchmark": "toy", "detector": "Toy", "n_skipped": {"id": 1, "c": 3, "a": 0, "b": 2},
           "wall_time_s": 2.0}
    (tmp_path / "results.json").write_text(json.dumps(old))
    res = report.rescore(tmp_path, out_dir=tmp_path / "new", plots=False, quiet=True)
    assert res["ood_sets"] == ["c", "a", "b"]  # the order of the old results.json
    assert res["n_skipped"] == old["n_skipped"]
    expected = _results(per_set)["scores"]["energy"]["b"]
    assert res["scores"]["energy"]["b"] == expected
    with np.load(tmp_path / "new" / "scores" / "b.npz") as z:  # rewritten in the current format
        assert str(z["name"]) == "b" and int(z["n_skipped"]) == 2 and "label" not in z.files


# ID 0, 1, 3 against OOD 2, 4: every metric worked out on paper in test_metrics.test_every_metric_by_hand, and all
# five differ, so a column filled by the wrong function shows here.
HAND_PER_SET = {
    "id": {"index": np.arange(3), "scores": {"s": np.array([0.0, 1.0, 3.0])}, "n_skipped": 0},
    "o": {"index": np.arange(2), "scores": {"s": np.array([2.0, 4.0])}, "n_skipped": 1},
    "p": {"index": np.arange(2), "scores": {"s": np.array([2.0, 4.0])}, "n_skipped": 2},  # o's twin
}
HAND = {"auroc": 5 / 6, "aupr_in": 65 / 72, "aupr_out": 19 / 24, "fpr95": 1 / 2, "fpr95_openood": 1 / 3}


def _markdown_cells(md: str) -> dict[tuple[str, str], dict[str, str]]:
    """{(score, set): {column header: cell}} from the first Markdown table in `md`."""
    lines = [line for line in md.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = dict(zip(head, (c.strip() for c in line.strip("|").split("|"))))
        rows[cells["score"], cells["OOD set"]] = cells
    return rows


def test_each_column_of_every_results_file_holds_its_own_metric(tmp_path):
    """results.json, results.csv and results.md name each metric where it is: swapping AUPR-In/Out or the two
    FPR95 conventions anywhere between the metric functions and the files fails here. The two tables a person
    reads hold one unit, percent, and their headers say so (issue 15: the CSV held fractions beside the
    Markdown's percent); results.json keeps fractions."""
    res = report.build_results(HAND_PER_SET, benchmark="hand", detector="Hand", groups={"both": ["o", "p"]},
                               wall_time=1.0)
    report.write_results(tmp_path, res, HAND_PER_SET, plots=False)

    saved = json.loads((tmp_path / "results.json").read_text())
    with open(tmp_path / "results.csv", newline="") as f:
        csv_rows = {(r["score"], r["ood_set"]): r for r in csv.DictReader(f)}
    md = _markdown_cells((tmp_path / "results.md").read_text())
    md_columns = {"auroc": "AUROC %", "aupr_in": "AUPR-In %", "aupr_out": "AUPR-Out %",
                  "fpr95": "FPR95 % (ID 95%)", "fpr95_openood": "FPR95 % (OpenOOD)"}
    for row in ("o", "both"):  # a set and the mean of two copies of it (the same numbers)
        for metric, value in HAND.items():
            assert saved["scores"]["s"][row][metric] == pytest.approx(value, abs=1e-12), (row, metric)
            csv_cell = float(csv_rows["s", row][f"{metric}_percent"])
            assert csv_cell == pytest.approx(100 * value, abs=1e-10), (row, metric)
            assert md["s", row][md_columns[metric]] == f"{100 * value:.2f}" == f"{csv_cell:.2f}", (row, metric)
    # counts: the group's OOD and skipped images are sums over its sets, the shared ID set is counted once
    assert [saved["scores"]["s"]["o"][k] for k in ("n_id", "n_ood", "n_skipped")] == [3, 2, 1]
    assert [saved["scores"]["s"]["both"][k] for k in ("n_id", "n_ood", "n_skipped")] == [3, 4, 3]
    assert (md["s", "both"]["n OOD"], csv_rows["s", "both"]["n_skipped"]) == ("4", "3")
    # the explanation under the table says which FPR95 is which
    text = (tmp_path / "results.md").read_text()
    assert "FPR95 (ID 95%): OOD accepted as ID" in text and "FPR95 (OpenOOD): ID flagged as OOD" in text
