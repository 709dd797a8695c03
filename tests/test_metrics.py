"""Float64 OOD metrics against hand-worked cases and an independent implementation of their definitions; the DDP
score collector's de-duplication."""
import numpy as np
import pytest
import torch

from ood_lightning.metrics import (
    METRICS,
    ScoreCollector,
    aupr_in,
    aupr_out,
    auroc,
    fpr95,
    fpr95_openood,
    group_means,
    ood_metrics,
)

# A case small enough to work out on paper, where all five metrics differ (see test_every_metric_by_hand).
HAND_ID, HAND_OOD = [0.0, 1.0, 3.0], [2.0, 4.0]
HAND = {"auroc": 5 / 6, "aupr_in": 65 / 72, "aupr_out": 19 / 24, "fpr95": 1 / 2, "fpr95_openood": 1 / 3}


def _pr_area(positive, negative) -> float:
    """Trapezoid area under the precision-recall curve, positives ranked by higher score, written from the
    definition (no sklearn): one point (recall, precision) per distinct threshold t (flagged: score >= t), from
    the highest down, after the start point (0, 1)."""
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    points = [(0.0, 1.0)]
    for t in np.unique(np.r_[positive, negative])[::-1]:
        tp, fp = (positive >= t).sum(), (negative >= t).sum()
        points.append((tp / positive.size, tp / (tp + fp)))
    return sum((r1 - r0) * (p0 + p1) / 2 for (r0, p0), (r1, p1) in zip(points[:-1], points[1:]))


def _independent_reference(id_s, ood_s):
    """AUROC (pair counting, ties 1/2), AUPR-In (ID positive, ranked by -score), AUPR-Out (OOD positive)."""
    id_s, ood_s = np.asarray(id_s, float), np.asarray(ood_s, float)
    pairs = (ood_s[:, None] > id_s[None, :]).mean() + 0.5 * (ood_s[:, None] == id_s[None, :]).mean()
    return pairs, _pr_area(-id_s, -ood_s), _pr_area(ood_s, id_s)


def test_every_metric_by_hand():
    """ID 0, 1, 3 and OOD 2, 4 (OOD positive, higher = OOD), every number worked out on paper.

    AUROC: of the 6 (ID, OOD) pairs, OOD is higher in 5 (all but 2 < 3) -> 5/6.
    AUPR-Out: ranked 4(O) 3(I) 2(O) 1(I) 0(I); (recall, precision) from (0, 1): (1/2, 1), (1/2, 1/2), (1, 2/3),
      (1, 1/2), (1, 2/5); trapezoids 1/2 * 1 + 1/2 * (1/2 + 2/3) / 2 = 1/2 + 7/24 = 19/24.
    AUPR-In: ID positive, ranked by -score: 0(I) 1(I) 2(O) 3(I) 4(O); points (1/3, 1), (2/3, 1), (2/3, 2/3),
      (1, 3/4), (1, 3/5); area 2/3 * 1 + 1/3 * (2/3 + 3/4) / 2 = 2/3 + 17/72 = 65/72.
      (Average precision would give 5/6 for AUPR-Out: the trapezoid is OpenOOD v1.5's, and it is not AP.)
    fpr95 (ODIN): 95th ID percentile at rank 0.95 * 2 = 1.9: 1 + 0.9 * (3 - 1) = 2.8; OOD strictly below: 2 -> 1/2.
    fpr95_openood: catching 95% of 2 OOD needs both, threshold 2; ID at or above it: 3 -> 1/3.
    """
    got = ood_metrics(HAND_ID, HAND_OOD)
    for name, value in HAND.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
        assert METRICS[name](HAND_ID, HAND_OOD) == pytest.approx(value, abs=1e-12), name
    assert (aupr_in(HAND_ID, HAND_OOD), aupr_out(HAND_ID, HAND_OOD)) == pytest.approx((65 / 72, 19 / 24))
    assert (fpr95(HAND_ID, HAND_OOD), fpr95_openood(HAND_ID, HAND_OOD)) == pytest.approx((1 / 2, 1 / 3))
    assert _independent_reference(HAND_ID, HAND_OOD) == pytest.approx((5 / 6, 65 / 72, 19 / 24), abs=1e-12)


@pytest.mark.parametrize(
    "make",
    [
        lambda r: (r.normal(0, 1, 300), r.normal(1, 1.5, 200)),  # continuous, overlapping
        lambda r: (r.integers(0, 5, 400).astype(float), r.integers(2, 8, 250).astype(float)),  # heavy ties
        lambda r: (r.normal(5, 1, 50), r.normal(0, 1, 700)),  # mostly reversed, unbalanced
    ],
)
def test_matches_an_independent_implementation(make):
    id_s, ood_s = make(np.random.default_rng(123))
    ref = _independent_reference(id_s, ood_s)
    got = (auroc(id_s, ood_s), aupr_in(id_s, ood_s), aupr_out(id_s, ood_s))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_all_identical_scores():
    id_s, ood_s = np.full(30, 2.0), np.full(70, 2.0)
    assert auroc(id_s, ood_s) == pytest.approx(0.5)
    ref = _independent_reference(id_s, ood_s)
    assert aupr_in(id_s, ood_s) == pytest.approx(ref[1])
    assert aupr_out(id_s, ood_s) == pytest.approx(ref[2])
    # one threshold: at it everything is flagged OOD, so all ID is a false positive (OpenOOD); no OOD is
    # strictly below the 95th ID percentile (= 2), so none is accepted as ID (ODIN)
    assert fpr95_openood(id_s, ood_s) == 1.0
    assert fpr95(id_s, ood_s) == 0.0


def test_auroc_hand_counted_pairs():
    # 16 (id, ood) pairs; a pair scores 1 if ood > id, 1/2 if equal:
    #   id 0: 2,3,4,5 all above -> 4;  id 1: -> 4;  id 2: tie with 2, 3 above -> 3.5;
    #   id 3: 2 below, tie with 3, 2 above -> 2.5.  Total 14 / 16 = 0.875
    assert auroc([0, 1, 2, 3], [2, 3, 4, 5]) == pytest.approx(14 / 16)


def test_perfect_and_reversed_separation():
    id_s, ood_s = np.arange(20.0), np.arange(100.0, 110.0)
    m = ood_metrics(id_s, ood_s)
    # trapezoid sums may land one ulp off 1
    assert [m["auroc"], m["aupr_in"], m["aupr_out"]] == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
    assert (m["fpr95"], m["fpr95_openood"]) == (0.0, 0.0)
    assert (m["n_id"], m["n_ood"]) == (20, 10)
    assert list(m)[:5] == list(METRICS) == ["auroc", "aupr_in", "aupr_out", "fpr95", "fpr95_openood"]

    assert auroc(ood_s, id_s) == 0.0
    # reversed: every OOD sample lies below every ID sample, so all are accepted as ID,
    # and catching 95% of OOD means flagging every ID sample
    assert fpr95(ood_s, id_s) == 1.0
    assert fpr95_openood(ood_s, id_s) == 1.0


def test_fpr95_hand_case_strict_threshold():
    # np.percentile(0..99, 95) interpolates at rank 0.95 * 99 = 94.05 -> 94 + 0.05 * (95 - 94) = 94.05.
    # OOD accepted as ID when strictly below: 94.0 yes, 94.05 no (equal), 95 no -> 1/3
    id_s = np.arange(100.0)
    assert fpr95(id_s, [94.0, 94.05, 95.0]) == pytest.approx(1 / 3)


def test_fpr95_openood_hand_case():
    # 20 OOD: one at -1 (below all ID), one at 5.5, 18 at 20..37. Catching 19/20 = 0.95 of OOD needs the
    # threshold down to 5.5 (score >= 5.5 is flagged). ID = 0..9 plus one exactly at 5.5:
    # flagged ID = 6, 7, 8, 9 and the tie 5.5 -> 5 of 11.
    id_s = np.r_[np.arange(10.0), 5.5]
    ood_s = np.r_[-1.0, 5.5, np.arange(20.0, 38.0)]
    assert fpr95_openood(id_s, ood_s) == pytest.approx(5 / 11)
    # ODIN convention on the same data: 95th ID percentile of 11 values lies between 8 and 9 (8.5);
    # OOD strictly below it: -1 and 5.5 -> 2 of 20
    assert np.percentile(id_s, 95) == pytest.approx(8.5)
    assert fpr95(id_s, ood_s) == pytest.approx(2 / 20)
    # and by name in the table every results file is made from
    m = ood_metrics(id_s, ood_s)
    assert (m["fpr95"], m["fpr95_openood"]) == pytest.approx((2 / 20, 5 / 11))


def test_unbounded_scores_not_squashed():
    from torchmetrics.functional.classification import binary_auroc

    r = np.random.default_rng(7)
    id_s, ood_s = r.normal(1e6, 1, 500), r.normal(1e6 + 3, 1, 500)
    ours = auroc(id_s, ood_s)
    assert ours > 0.9
    # the bug we avoid: torchmetrics applies a sigmoid to scores outside [0, 1]; sigmoid(1e6) == 1 for all
    preds = torch.tensor(np.r_[id_s, ood_s], dtype=torch.float32)
    target = torch.cat([torch.zeros(500), torch.ones(500)]).long()
    theirs = float(binary_auroc(preds, target))
    assert theirs == pytest.approx(0.5)
    assert ours - theirs > 0.3


def test_accepts_lists_tensors_and_low_precision():
    id_s = np.random.default_rng(0).normal(0, 1, 64)
    ood_s = id_s + 0.5
    ref = auroc(id_s, ood_s)
    assert auroc(list(id_s), list(ood_s)) == ref
    assert auroc(torch.tensor(id_s), torch.tensor(ood_s).reshape(-1, 1)) == ref
    bf = auroc(torch.tensor(id_s, dtype=torch.bfloat16), torch.tensor(ood_s, dtype=torch.bfloat16))
    assert abs(bf - ref) < 0.1


@pytest.mark.parametrize("fn", list(METRICS.values()) + [ood_metrics])
def test_rejects_empty_and_non_finite(fn):
    good = np.arange(5.0)
    with pytest.raises(ValueError, match="ID scores are empty"):
        fn([], good)
    with pytest.raises(ValueError, match="OOD scores are empty"):
        fn(good, np.array([]))
    with pytest.raises(ValueError, match=r"OOD scores contain 2 non-finite"):
        fn(good, [1.0, np.nan, 2.0, np.inf])
    with pytest.raises(ValueError, match=r"ID scores contain 1 non-finite"):
        fn(torch.tensor([0.0, float("nan")]), good)


def test_group_means_hand_built():
    per_set = {
        "a": {"auroc": 0.9, "aupr_in": 0.8, "aupr_out": 0.7, "fpr95": 0.2, "fpr95_openood": 0.4, "n_id": 10, "n_ood": 5},
        "b": {"auroc": 0.7, "aupr_in": 0.6, "aupr_out": 0.5, "fpr95": 0.4, "fpr95_openood": 0.6, "n_id": 10, "n_ood": 15},
        "c": {"auroc": 0.5, "aupr_in": 0.5, "aupr_out": 0.5, "fpr95": 1.0, "fpr95_openood": 1.0, "n_id": 10, "n_ood": 100,
              "extra": 123.0},
    }
    out = group_means(per_set, {"near": ["a", "b"], "far": ["c"]})
    assert set(out) == {"near", "far"}
    # unweighted: b has 3x a's OOD samples but counts the same
    assert out["near"]["auroc"] == pytest.approx(0.8)
    assert out["near"]["aupr_in"] == pytest.approx(0.7)
    assert out["near"]["aupr_out"] == pytest.approx(0.6)
    assert out["near"]["fpr95"] == pytest.approx(0.3)
    assert out["near"]["fpr95_openood"] == pytest.approx(0.5)
    assert (out["near"]["n_id"], out["near"]["n_ood"]) == (10, 20)  # one shared ID set: its count is not summed
    assert out["far"]["auroc"] == pytest.approx(0.5) and out["far"]["n_ood"] == 100
    assert "extra" not in out["far"]


def test_group_means_refuses_unknown_members_and_empty_groups():
    """A misspelt member (issue 15: --groups '{near: [tinn]}') must not drop out of its mean, nor a group out of the
    table: the error names every bad group and the sets there are."""
    row = {"auroc": 0.9, "n_id": 10, "n_ood": 5}
    per_set = {"tin": row, "mnist": row}
    with pytest.raises(ValueError) as err:
        group_means(per_set, {"near": ["tinn"], "far": ["mnist", "svhn", "cifar"], "none": [], "ok": ["tin"]})
    assert str(err.value) == ("group 'near' lists tinn, not among the test sets of this run; "
                              "group 'far' lists svhn, cifar, not among the test sets of this run; "
                              "group 'none' lists no set. The OOD test sets are: tin, mnist")


def test_score_collector_deduplicates_ddp_padding():
    rng = np.random.default_rng(0)
    n = 10
    mse, cos = rng.normal(size=n), rng.normal(1e6, 1, size=n)
    # two "ranks" worth of shuffled batches; indices 3 and 0 repeat as a padded DistributedSampler would
    order = np.r_[rng.permutation(n), 3, 0]
    col = ScoreCollector(["mse", "cos.sim"])
    for chunk in np.array_split(order, 4):
        idx = torch.from_numpy(chunk)
        col.update({"mse": torch.from_numpy(mse[chunk]).float(), "cos.sim": torch.from_numpy(cos[chunk])}, idx)
    col.add_skipped(torch.tensor([42, 17]))
    col.add_skipped(torch.tensor([42]))
    out = col.compute()
    np.testing.assert_array_equal(out["index"], np.arange(n))
    assert out["index"].dtype == np.int64
    assert out["scores"]["mse"].dtype == np.float64
    np.testing.assert_allclose(out["scores"]["mse"], mse, rtol=1e-6)  # stored as the given float32
    np.testing.assert_array_equal(out["scores"]["cos.sim"], cos)  # float64 kept exactly
    assert out["n_skipped"] == 2


def test_score_collector_keeps_first_occurrence():
    col = ScoreCollector(["s"])
    col.update({"s": torch.tensor([5.0, 1.0])}, torch.tensor([7, 2]))
    col.update({"s": torch.tensor([9.0])}, torch.tensor([7]))
    out = col.compute()
    np.testing.assert_array_equal(out["index"], [2, 7])
    np.testing.assert_array_equal(out["scores"]["s"], [1.0, 5.0])


def test_score_collector_empty_and_reset():
    col = ScoreCollector(["a", "b"])
    with pytest.warns(UserWarning):  # torchmetrics warns that compute ran before update
        out = col.compute()
    assert out["index"].shape == (0,) and out["n_skipped"] == 0
    assert set(out["scores"]) == {"a", "b"} and all(v.shape == (0,) for v in out["scores"].values())

    col.update({"a": torch.ones(2), "b": torch.zeros(2)}, torch.tensor([0, 1]))
    col.reset()
    col.update({"a": torch.ones(1), "b": torch.zeros(1)}, torch.tensor([5]))
    assert col.compute()["index"].tolist() == [5]


def test_score_collector_rejects_mismatched_input():
    col = ScoreCollector(["a"])
    with pytest.raises(ValueError, match="expected scores"):
        col.update({"b": torch.ones(2)}, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="3 values for 2 indices"):
        col.update({"a": torch.ones(3)}, torch.tensor([0, 1]))


def test_score_collector_labels_and_extras_follow_deduplication():
    # index 4 arrives twice (DDP padding) with the same label; the first occurrence is kept everywhere
    col = ScoreCollector(["s"], with_labels=True, extra_names=["prediction"])
    col.update({"s": torch.tensor([0.4, 0.1])}, torch.tensor([4, 1]), labels=torch.tensor([7, 3]),
               extras={"prediction": torch.tensor([9, 3])})
    col.update({"s": torch.tensor([0.2, 0.4])}, torch.tensor([2, 4]), labels=torch.tensor([-1, 7]),
               extras={"prediction": torch.tensor([5, 9])})
    out = col.compute()
    np.testing.assert_array_equal(out["index"], [1, 2, 4])
    np.testing.assert_array_equal(out["labels"], [3, -1, 7])
    assert out["labels"].dtype == np.int64
    np.testing.assert_array_equal(out["extras"]["prediction"], [3, 5, 9])
    assert out["extras"]["prediction"].dtype == np.int64  # extras keep the dtype they were given in
    np.testing.assert_allclose(out["scores"]["s"], [0.1, 0.2, 0.4], rtol=1e-6)


def test_score_collector_missing_labels_become_minus_one_and_default_has_none():
    col = ScoreCollector(["s"], with_labels=True)
    col.update({"s": torch.ones(3)}, torch.tensor([2, 0, 1]))
    assert col.compute()["labels"].tolist() == [-1, -1, -1]

    plain = ScoreCollector(["s"])  # existing behaviour: no labels, no extras in the output
    plain.update({"s": torch.ones(2)}, torch.tensor([0, 1]), labels=torch.tensor([5, 6]))
    assert set(plain.compute()) == {"index", "scores", "n_skipped", "skipped"}


def test_score_collector_rejects_bad_labels_and_extras():
    with pytest.raises(ValueError, match="distinct from score_names"):
        ScoreCollector(["s"], extra_names=["s"])
    col = ScoreCollector(["s"], with_labels=True, extra_names=["p"])
    with pytest.raises(ValueError, match="expected extras"):
        col.update({"s": torch.ones(2)}, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="3 labels for 2 indices"):
        col.update({"s": torch.ones(2)}, torch.tensor([0, 1]), labels=torch.tensor([1, 2, 3]),
                   extras={"p": torch.ones(2)})
    with pytest.raises(ValueError, match="extra 'p' has 1 values for 2 indices"):
        col.update({"s": torch.ones(2)}, torch.tensor([0, 1]), extras={"p": torch.ones(1)})
