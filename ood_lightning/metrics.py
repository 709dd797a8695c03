"""Float64 OOD metrics and a DDP-safe per-sample score collector.

Convention: a score is an OOD score, higher = more likely OOD. Metrics run in float64 numpy on the whole score
arrays at the end of an evaluation, never through torchmetrics' AUROC, which squashes scores outside [0, 1]
with a sigmoid and so turns unbounded scores (reconstruction errors ~1e6) into AUROC 0.5.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torchmetrics
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score, roc_curve
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

from ood_lightning.data.sources import NO_LABEL

__all__ = [
    "auroc", "aupr_in", "aupr_out", "fpr95", "fpr95_openood",
    "METRICS", "ood_metrics", "group_means", "ScoreCollector",
]


def _as_scores(scores, which: str) -> np.ndarray:
    """1-D float64 copy of numpy / list / torch scores (any dtype, bf16 included); rejects empty and non-finite."""
    if isinstance(scores, Tensor):
        scores = scores.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(scores, dtype=np.float64)
    if a.ndim == 2 and a.shape[1] == 1:  # [N, 1] from a keepdim reduction
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{which} scores must be 1-D (one score per sample), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{which} scores are empty: need at least one {which} sample to compute OOD metrics")
    bad = int((~np.isfinite(a)).sum())
    if bad:
        raise ValueError(f"{which} scores contain {bad} non-finite value(s) (NaN or inf) out of {a.size}")
    return a


def _labelled(id_scores, ood_scores) -> tuple[np.ndarray, np.ndarray]:
    """(is_ood labels, scores) with ID first; OOD is the positive class."""
    i, o = _as_scores(id_scores, "ID"), _as_scores(ood_scores, "OOD")
    return np.r_[np.zeros(i.size), np.ones(o.size)], np.r_[i, o]


def auroc(id_scores, ood_scores) -> float:
    """Area under the ROC curve, OOD positive; ties count 1/2."""
    y, s = _labelled(id_scores, ood_scores)
    return float(roc_auc_score(y, s))


def aupr_in(id_scores, ood_scores) -> float:
    """Trapezoid area under the PR curve with ID positive, ranked by -score (OpenOOD v1.5, not average precision)."""
    y, s = _labelled(id_scores, ood_scores)
    precision, recall, _ = precision_recall_curve(1 - y, -s)
    return float(auc(recall, precision))


def aupr_out(id_scores, ood_scores) -> float:
    """Trapezoid area under the PR curve with OOD positive, ranked by score (OpenOOD v1.5)."""
    y, s = _labelled(id_scores, ood_scores)
    precision, recall, _ = precision_recall_curve(y, s)
    return float(auc(recall, precision))


def fpr95(id_scores, ood_scores) -> float:
    """Fraction of OOD accepted as ID when 95% of ID is accepted (ODIN/energy; the LFDN reference code).

    The threshold is the linearly interpolated 95th percentile of the ID scores; an OOD sample is accepted
    when its score is strictly below it.
    """
    i, o = _as_scores(id_scores, "ID"), _as_scores(ood_scores, "OOD")
    return float(np.mean(o < np.percentile(i, 95)))


def fpr95_openood(id_scores, ood_scores) -> float:
    """Fraction of ID flagged OOD at the first ROC threshold that catches >= 95% of OOD (OpenOOD v1.5)."""
    y, s = _labelled(id_scores, ood_scores)
    fpr, tpr, _ = roc_curve(y, s)
    return float(fpr[np.argmax(tpr >= 0.95)])


METRICS: dict[str, Callable[..., float]] = {
    "auroc": auroc,
    "aupr_in": aupr_in,
    "aupr_out": aupr_out,
    "fpr95": fpr95,
    "fpr95_openood": fpr95_openood,
}


def ood_metrics(id_scores, ood_scores) -> dict[str, float]:
    """All of METRICS for one ID/OOD pair, plus the sample counts so tables show what was scored."""
    i, o = _as_scores(id_scores, "ID"), _as_scores(ood_scores, "OOD")
    out: dict = {name: fn(i, o) for name, fn in METRICS.items()}
    out["n_id"], out["n_ood"] = int(i.size), int(o.size)
    return out


def group_means(
    per_set: Mapping[str, Mapping[str, float]], groups: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, float]]:
    """Unweighted mean of each metric over the sets of each group (OpenOOD near/far averages).

    Every member must be a set of ``per_set`` and no group may be empty: a misspelt name would otherwise drop out
    of its mean (or the whole group out of the table) without a word. OOD sample counts are summed; every set
    shares one ID set, so its count is kept, not summed.
    """
    problems = []
    for group, names in groups.items():
        unknown = [n for n in names if n not in per_set]
        if unknown:
            problems.append(f"group {group!r} lists {', '.join(unknown)}, not among the test sets of this run")
        elif not names:
            problems.append(f"group {group!r} lists no set")
    if problems:
        raise ValueError("; ".join(problems) + f". The OOD test sets are: {', '.join(per_set) or 'none'}")
    out: dict[str, dict[str, float]] = {}
    for group, names in groups.items():
        members = [per_set[n] for n in names]
        row: dict = {}
        for key in METRICS:
            values = [m[key] for m in members if m.get(key) is not None]
            if values:
                row[key] = float(np.mean(np.asarray(values, dtype=np.float64)))
        if any("n_id" in m for m in members):
            row["n_id"] = int(max(m.get("n_id", 0) for m in members))
        if any("n_ood" in m for m in members):
            row["n_ood"] = int(sum(m.get("n_ood", 0) for m in members))
        out[group] = row
    return out


class ScoreCollector(torchmetrics.Metric):
    """Concatenates per-sample scores with their dataset indices; compute() returns each index once.

    Lightning/torchmetrics gather the states across DDP ranks; the DistributedSampler pads shards with repeated
    samples, so compute() keeps the first occurrence of each index (duplicates are identical samples).

    Besides the scores it can keep, per sample and de-duplicated the same way:
    - ``with_labels=True``: the batch's class labels (``update(..., labels=...)``; -1 where none was given);
    - ``extra_names``: other per-sample values a detector reports but that are not OOD scores (e.g. the
      classifier's predicted class), returned under "extras" with the dtype they were given in.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(
        self,
        score_names: Sequence[str],
        *,
        with_labels: bool = False,
        extra_names: Sequence[str] = (),
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        names, extras = list(score_names), list(extra_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"score_names must be non-empty and unique, got {names}")
        if len(set(extras)) != len(extras) or set(extras) & set(names):
            raise ValueError(f"extra_names must be unique and distinct from score_names, got {extras}")
        self.score_names = names
        self.extra_names = extras
        self.with_labels = bool(with_labels)
        # states are named by position so any score name (dots, clashes with Metric attributes) is safe
        self._state_of = {name: f"score_{k}" for k, name in enumerate(names)}
        self._extra_state_of = {name: f"extra_{k}" for k, name in enumerate(extras)}
        for state in [*self._state_of.values(), *self._extra_state_of.values()]:
            self.add_state(state, default=[], dist_reduce_fx="cat")
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("skipped", default=[], dist_reduce_fx="cat")
        if self.with_labels:
            self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(
        self,
        scores: Mapping[str, Tensor],
        index: Tensor,
        labels: Tensor | Sequence[int] | None = None,
        extras: Mapping[str, Tensor] | None = None,
    ) -> None:
        if set(scores) != set(self.score_names):
            raise ValueError(f"expected scores {sorted(self.score_names)}, got {sorted(scores)}")
        extras = dict(extras or {})
        if set(extras) != set(self.extra_names):
            raise ValueError(f"expected extras {sorted(self.extra_names)}, got {sorted(extras)}")
        index = torch.as_tensor(index, device=self.device).reshape(-1).long()
        for kind, values, states in (("score", scores, self._state_of), ("extra", extras, self._extra_state_of)):
            for name, value in values.items():
                value = torch.as_tensor(value, device=self.device).detach().reshape(-1)
                if value.numel() != index.numel():
                    raise ValueError(f"{kind} {name!r} has {value.numel()} values for {index.numel()} indices")
                getattr(self, states[name]).append(value)
        if self.with_labels:
            # appended on every update, always int64, so every rank gathers the same dtype
            if labels is None:
                labels = torch.full_like(index, NO_LABEL)
            labels = torch.as_tensor(labels, device=self.device).reshape(-1).long()
            if labels.numel() != index.numel():
                raise ValueError(f"{labels.numel()} labels for {index.numel()} indices")
            self.labels.append(labels)
        self.index.append(index)
        # An int64 entry on every rank that saw data: torchmetrics would otherwise gather an empty
        # float32 "skipped" on ranks that skipped nothing beside int64 on ranks that did.
        self.skipped.append(index.new_empty(0))

    def add_skipped(self, index: Tensor) -> None:
        """Records dataset indices of samples that could not be read, so reports count them."""
        self.skipped.append(torch.as_tensor(index, device=self.device).reshape(-1).long())

    def compute(self) -> dict:
        """{"index": sorted unique int64, "scores": {name: float64}, "n_skipped": int, "skipped": the skipped
        indices (sorted unique int64)}, plus "labels" (int64)
        with ``with_labels`` and "extras" ({name: array}) with ``extra_names``; arrays are aligned with index."""
        index = _cat_numpy(self.index, np.int64)
        index, first = np.unique(index, return_index=True)  # sorted; first occurrence of each index
        scores = {name: _cat_numpy(getattr(self, state), np.float64)[first] for name, state in self._state_of.items()}
        skipped = np.unique(_cat_numpy(self.skipped, np.int64))
        out = {"index": index, "scores": scores, "n_skipped": int(skipped.size), "skipped": skipped}
        if self.with_labels:
            out["labels"] = _cat_numpy(self.labels, np.int64)[first]
        if self.extra_names:
            out["extras"] = {name: _cat_numpy(getattr(self, state), None)[first]
                             for name, state in self._extra_state_of.items()}
        return out


def _cat_numpy(state, dtype) -> np.ndarray:
    """A cat state (list of tensors before sync, one tensor after) as a numpy array; empty when never updated.

    ``dtype`` np.float64 / np.int64 converts; None keeps the state's own dtype (bf16/fp16 become float32)."""
    if isinstance(state, list) and not state:
        return np.zeros(0, dtype=np.float64 if dtype is None else dtype)
    tensor = dim_zero_cat(state).detach().to("cpu")
    if dtype is None:
        return (tensor.float() if tensor.dtype in (torch.bfloat16, torch.float16) else tensor).numpy()
    return tensor.to(torch.float64 if dtype == np.float64 else torch.int64).numpy()
