"""DiffGuard combined with a classifier baseline, as a cascade: the baseline decides where it is confident, the
expensive refiner (DiffGuard) decides the hard cases in between.

The paper gives the rule only in words ("the combined method only trusts samples with high detection confidence by
the baselines, while resorting to DiffGuard for hard cases", Tables 1-2's "+MLS", "+KNN", "+ViM" rows) and the
released code has no fusion (docs/diffguard.md (Fusion with a baseline)). Confidence is measured against the
in-distribution *validation* distribution of the baseline score alone, so the rule never sees a test set:

    tier 0  b <= low   confidently ID,   ordered by b
    tier 1  between    the hard cases,    ordered by the refiner score d
    tier 2  b >= high  confidently OOD,  ordered by b

with low / high the q_low / q_high quantiles of b on ID validation images. The fused score is lexicographic in
(tier, value), stored as the float64 `tier + squash(value)`; a confident baseline decision is never changed by d.
So d is needed only in the band, and `CascadeFusion` runs the refiner only there (docs/diffguard.md (Cascade
cost)): the fused score is the one a run of the refiner on every image gives, at the cost of the band alone.
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from lightning.pytorch.utilities import move_data_to_device
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from ood_lightning.classifiers import Classifier
from ood_lightning.data.feature_cache import BatchInputs
from ood_lightning.detectors.base import OODDetector
from ood_lightning.detectors.baselines import ClassifierBaselines

__all__ = ["CascadeFusion", "cascade", "squash", "tiers"]

VALIDATION = "id_validation"  # the dataset name the baseline sees while its thresholds are calibrated
TIER_NAMES = ("id_confident", "band", "ood_confident")
PASS_EXTRAS = ("unet_evals", "classifier_evals")  # per-sample cost a refiner may report (DiffGuardGDM does)


def tiers(baseline: Tensor, low: float, high: float) -> Tensor:
    """int64 tier per sample: 0 where b <= low, 2 where b >= high, 1 in between.

    A NaN b is no confident decision (tier 1, the refiner decides); when low == high, b == low is tier 0.
    Compared in float64, so a stored float64 copy of b and the thresholds give the same tiers.
    """
    b = baseline.double()
    return torch.where(b <= low, 0, torch.where(b >= high, 2, 1))


def squash(z: Tensor) -> Tensor:
    """1/2 + arctan(asinh z) / pi: strictly increasing from the real line onto (0, 1), in float64.

    asinh grows like log|z|, so the tail approaches 0 and 1 like 1 / log|z| instead of arctan's 1 / |z| or a
    logistic's exp(-|z|): relative differences of about 1e-12 stay distinct at |z| = 1e6 and any two distinct
    float32 values stay distinct up to float32's largest (a logistic saturates to 1.0 near z = 37, arctan
    alone loses float32 neighbours above about 1e8). Near 0 it is about 1/2 + z / pi.
    """
    return 0.5 + torch.atan(torch.asinh(z.double())) / math.pi


def cascade(baseline: Tensor, refiner: Tensor, low: float, high: float) -> Tensor:
    """The fused OOD score (float64, higher = OOD) of baseline scores b and refiner scores d (both higher = OOD).

    `tier + squash(value)` with the tiers of `tiers`: in the confident tiers the value is b standardised by the
    band, (b - (low + high) / 2) / ((high - low) / 2) (which centres b where squash resolves best; the statistics
    are the thresholds, so come from ID validation only), in the band it is d as it is. Hence every tier-0
    sample ranks below every band sample, which ranks below every tier-2 sample; inside a tier the order is b's
    (confident tiers, whatever d is) or d's (band). Infinite values keep their place; NaN d in the band gives NaN.
    """
    b, d = baseline.double(), refiner.double()
    tier = tiers(b, low, high)
    half_width = (high - low) / 2 if high > low else 1.0
    value = torch.where(tier == 1, d, (b - (low + high) / 2) / half_width)
    return tier.double() + squash(value)


class CascadeFusion(OODDetector):
    """A baseline detector and a refiner detector fused by `cascade`, as one detector.

    The refiner runs only on the band's samples of each batch (`refine_all` false, the default): the confident tiers
    never read d, so the fused score is the one of a full run, at the band's cost. Scores: the baseline's
    `baseline_score` and the fused `<refiner_score>+<baseline_score>` (e.g. mls, logits_l1+mls); the refiner's
    `refiner_score` is saved per sample (extra_<name> in scores/<set>.npz, NaN where the refiner did not run) but
    has no metrics, as a score defined on part of a set cannot be compared with one defined on all of it. With
    `refine_all` the refiner scores every image (its cost in full) and `refiner_score` is a score with its own row
    in the table beside its fusion. Extras per sample: `tier` (0 confident ID, 1 band, 2 confident OOD), the
    baseline's extras, and the refiner's (prefixed `refiner_` where a name clashes with the baseline's, e.g.
    refiner_prediction); without `refine_all` the refiner's values are float64 with NaN outside the band.

    At `setup("test")` a seeded sample of `validation_size` images of the datamodule's ID train split serves as ID
    validation set (the ID test set is never used): only the baseline scores it, and low / high are the
    `quantiles` of its score there. A child that needs fitting (`needs_fit`, e.g. ClassifierBaselines with knn /
    vim) is fitted through `fit`: the baseline on the rest of the train split, so the validation images are not its
    own neighbours, the refiner on all of it. Every process computes the thresholds; rank 0's are broadcast, so
    they agree exactly. The thresholds are printed, kept as `low` / `high`, logged as fusion/low and fusion/high,
    and handed to the evaluation (`results_extra`) with the tier counts per test set, as "fusion" in results.json,
    together with each set's cost: the fraction of images the refiner ran on, its UNet and classifier passes per
    image (where it reports them, as DiffGuardGDM's unet_evals / classifier_evals) and the seconds spent in the
    baseline and in the refiner (this process's).

    The thresholds and the children's fits are the fusion's `fitted_state`, saved with the run as fitted.pt, so
    predict.py and load_detector score without the benchmark.

    The fusion reads what its children read (`inputs`: images and/or cached features, served by the DataModule),
    so any detector can be baseline or refiner, LFDN included. The children are nested LightningModules: Lightning
    attaches the trainer to them and moves them with this module; `setup` and `on_test_start` are forwarded
    (e.g. DiffGuard's inference-mode check); pictures they `show` reach the evaluation like the fusion's own.
    When a ClassifierBaselines baseline and the refiner hold the same classifier (same architecture, normalisation
    and weights, e.g. the DenseNet of configs/fusion/), the baseline uses the refiner's copy (`shared_classifier`):
    one network in memory and on the device instead of two.

    Args:
        baseline: The detector trusted where it is confident, e.g. ClassifierBaselines.
        refiner: The detector that decides the hard cases, e.g. DiffGuardGDM.
        baseline_score: The baseline's score to use, one of its score_names (e.g. mls).
        refiner_score: The refiner's score to use, one of its score_names (e.g. logits_l1).
        quantiles: (q_low, q_high), 0 < q_low < q_high < 1: b at or below the q_low ID validation quantile is
            confidently ID, at or above q_high confidently OOD.
        validation_size: ID validation images drawn from the ID train split (all of it when smaller).
        seed: Seed of that draw.
        refine_all: Run the refiner on every image, as before the cascade saved anything (its own unfused row
            in the table, at its full cost); default: only on the band.
    """

    def __init__(
        self,
        baseline: OODDetector,
        refiner: OODDetector,
        baseline_score: str,
        refiner_score: str,
        quantiles: tuple[float, float] = (0.05, 0.95),
        validation_size: int = 1000,
        seed: int = 0,
        refine_all: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["baseline", "refiner"])
        for role, child, name in (("baseline", baseline, baseline_score), ("refiner", refiner, refiner_score)):
            if name not in child.score_names:
                raise ValueError(f"{role}_score {name!r} is not a score of the {role} {type(child).__name__}, "
                                 f"whose scores are {list(child.score_names)}")
        if baseline is refiner:
            raise ValueError("baseline and refiner must be two detectors; for two scores of one, build it twice")
        if baseline_score == refiner_score:
            raise ValueError(f"baseline_score and refiner_score are both {baseline_score!r}: the results table "
                             "could not tell them apart")
        if len(quantiles) != 2 or not 0 < quantiles[0] < quantiles[1] < 1:
            raise ValueError(f"quantiles must be (q_low, q_high) with 0 < q_low < q_high < 1, got {list(quantiles)}")
        if validation_size < 1:
            raise ValueError(f"validation_size must be at least 1, got {validation_size}")
        self.baseline, self.refiner = baseline, refiner
        self.shared_classifier = _share_classifier(baseline, refiner)
        self.fused_name = f"{refiner_score}+{baseline_score}"
        self._refiner_extras = {name: f"refiner_{name}" if name in baseline.extra_names else name
                                for name in refiner.extra_names}
        if refine_all:
            self.score_names = (baseline_score, refiner_score, self.fused_name)
            self.extra_names = ("tier", *baseline.extra_names, *self._refiner_extras.values())
        else:
            self.score_names = (baseline_score, self.fused_name)
            self.extra_names = ("tier", *baseline.extra_names, refiner_score, *self._refiner_extras.values())
        names = [*self.score_names, *self.extra_names]
        if len(set(names)) != len(names):
            raise ValueError(f"score and extra names of the fusion clash: {names}")
        self.low: float | None = None
        self.high: float | None = None
        self.validation_count = 0  # ID validation scores behind the thresholds
        self.seconds: dict[str, dict[str, float]] = {}  # per test set: seconds in the baseline and the refiner

    @property
    def inputs(self) -> BatchInputs:
        return self.baseline.inputs | self.refiner.inputs

    @property
    def needs_fit(self) -> bool:
        """The thresholds are set (and the children fitted) at setup("test"), or restored by load_fitted_state."""
        return self.low is None or self.high is None or self.baseline.needs_fit or self.refiner.needs_fit

    def fitted_state(self) -> dict | None:
        """The thresholds, their validation count and each child's fitted state (where it has one)."""
        if self.low is None or self.high is None:
            return None
        state = {"low": self.low, "high": self.high, "validation_count": self.validation_count}
        for role in ("baseline", "refiner"):
            child = getattr(self, role).fitted_state()
            if child is not None:
                state[role] = child
        return state

    def load_fitted_state(self, state: dict) -> None:
        self.low, self.high = float(state["low"]), float(state["high"])
        self.validation_count = int(state["validation_count"])
        for role in ("baseline", "refiner"):
            if role in state:
                getattr(self, role).load_fitted_state(state[role])

    # -- thresholds from ID validation images ------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage != "test":
            return
        dm = self.trainer.datamodule
        if dm.train_set is None:
            raise RuntimeError(f"CascadeFusion draws its ID validation images from the ID train split, but "
                               f"benchmark {dm.benchmark_name!r} has none here (data.train false, or folders "
                               "without id_train)")
        train_set = dm.served(dm.train_set, "train")  # with the features the children read
        validation, rest = _split(len(train_set), self.hparams.validation_size, self.hparams.seed)
        device, progress = self.trainer.strategy.root_device, self.trainer.is_global_zero
        if self.baseline.needs_fit:
            if not rest:
                raise ValueError(f"validation_size {self.hparams.validation_size} takes all {len(train_set)} "
                                 "train images: none are left to fit the baseline on; lower it")
            self.baseline.fit(Subset(train_set, rest), dm.loader, device, progress=progress)
        if self.refiner.needs_fit:
            self.refiner.fit(train_set, dm.loader, device, progress=progress)
        self.baseline.setup(stage)
        self.refiner.setup(stage)
        with self.trainer.precision_plugin.test_step_context():
            self.calibrate(Subset(train_set, validation), dm.loader, device)
        self.low, self.high = self.trainer.strategy.broadcast((self.low, self.high), src=0)
        if progress:
            q_low, q_high = self.hparams.quantiles
            print(f"CascadeFusion: {self.hparams.baseline_score} thresholds from {self.validation_count} ID "
                  f"validation images (seeded sample of the ID train split): low {self.low:.6g} (q {q_low}), "
                  f"high {self.high:.6g} (q {q_high})")

    @torch.no_grad()
    def calibrate(self, validation_set: Dataset, make_loader: Callable[[Dataset], DataLoader],
                  device: torch.device | str = "cpu") -> tuple[float, float]:
        """Set `low` / `high` to the quantiles of the baseline score on in-distribution `validation_set` (the
        refiner is not run). Non-finite scores are left out of the quantiles."""
        modes = {module: module.training for module in self.baseline.modules()}
        self.baseline.to(device).eval()
        values = []
        for batch in make_loader(validation_set):
            if batch["index"].numel():
                out = self.baseline.score(move_data_to_device(batch, device), VALIDATION)
                values.append(out[self.hparams.baseline_score].detach().double().cpu())
        for module, mode in modes.items():
            module.training = mode
        b = torch.cat(values) if values else torch.zeros(0, dtype=torch.float64)
        b = b[b.isfinite()]
        if not b.numel():
            raise RuntimeError(f"no finite {self.hparams.baseline_score} score on the {len(validation_set)} ID "
                               "validation images: cannot set the cascade's thresholds")
        self.low, self.high = torch.quantile(b, torch.tensor(self.hparams.quantiles, dtype=torch.float64)).tolist()
        self.validation_count = int(b.numel())
        if self.low == self.high:
            warnings.warn(f"CascadeFusion: low == high == {self.low}: the band is empty, the refiner decides "
                          "nothing (ties in the ID validation scores)", stacklevel=2)
        return self.low, self.high

    # -- scoring -----------------------------------------------------------------------------------------
    def on_test_start(self) -> None:
        self.baseline.on_test_start()
        self.refiner.on_test_start()
        self.seconds = {}

    def score(self, batch: dict, dataset: str) -> dict[str, Tensor]:
        if self.low is None or self.high is None:
            raise RuntimeError("the cascade's thresholds are not set: run through Trainer.test (setup calibrates "
                               "them) or call calibrate()")
        hp = self.hparams
        seconds = self.seconds.setdefault(dataset, {"baseline": 0.0, "refiner": 0.0})
        start = time.perf_counter()
        base = self.baseline.score(batch, dataset)
        b = base[hp.baseline_score]
        tier = tiers(b, self.low, self.high)
        seconds["baseline"] += time.perf_counter() - start
        start = time.perf_counter()
        if hp.refine_all:
            refined = self.refiner.score(batch, dataset)
        else:
            refined = self._score_band(batch, dataset, tier == 1)
        seconds["refiner"] += time.perf_counter() - start
        d = refined[hp.refiner_score]
        return {
            hp.baseline_score: b,
            hp.refiner_score: d,
            self.fused_name: cascade(b, d, self.low, self.high),
            "tier": tier,
            **{name: base[name] for name in self.baseline.extra_names},
            **{new: refined[old] for old, new in self._refiner_extras.items()},
        }

    def _score_band(self, batch: dict, dataset: str, band: Tensor) -> dict[str, Tensor]:
        """The refiner's values on the whole batch, computed on its `band` rows only (one call, as one batch):
        float64, NaN in the other rows. The refiner sees the band rows with their own dataset indices, so their
        seeded noise and scores are the ones a run on every image gives."""
        names = (self.hparams.refiner_score, *self._refiner_extras)
        out = {name: torch.full(band.shape, math.nan, dtype=torch.float64, device=band.device) for name in names}
        rows = band.nonzero().squeeze(1)
        if len(rows):
            whole = len(rows) == len(band)
            refined = self.refiner.score(batch if whole else _select_rows(batch, rows, len(band)), dataset)
            for name in names:
                out[name][rows] = refined[name].detach().to(band.device, torch.float64).reshape(-1)
        return out

    def results_extra(self, per_set: dict[str, dict]) -> dict:
        """results.json's "fusion": the rule, the thresholds, their validation count, the tiers and the cost per
        test set."""
        counts = {name: dict(zip(TIER_NAMES, torch.bincount(torch.as_tensor(s["extras"]["tier"]).long(),
                                                            minlength=3).tolist()))
                  for name, s in per_set.items()}
        hp = self.hparams
        return {"fusion": {
            "baseline_score": hp.baseline_score, "refiner_score": hp.refiner_score, "fused_score": self.fused_name,
            "quantiles": list(hp.quantiles), "low": self.low, "high": self.high,
            "validation_images": self.validation_count, "tiers": counts, "refine_all": bool(hp.refine_all),
            "cost": {name: self._cost(name, s) for name, s in per_set.items()},
        }}

    def _cost(self, name: str, scored: dict) -> dict:
        """One set's cost: images, how many the refiner ran on (the band's, or every image with refine_all), their
        fraction, the refiner's passes per image of the set, and this process's seconds."""
        extras = scored.get("extras", {})
        n = len(scored["index"])
        refined = n if self.hparams.refine_all else int((np.asarray(extras["tier"]) == 1).sum())
        cost = {"images": n, "refined": refined, "refined_fraction": refined / n if n else None}
        for extra in PASS_EXTRAS:
            if extra in self._refiner_extras:
                values = np.asarray(extras[self._refiner_extras[extra]], dtype=np.float64)
                cost[f"refiner_{extra}_per_image"] = float(np.nansum(values)) / n if n else None
        seconds = self.seconds.get(name, {"baseline": 0.0, "refiner": 0.0})
        cost.update({f"{part}_seconds": round(value, 3) for part, value in seconds.items()})
        return cost

    def on_test_epoch_end(self) -> None:
        for key in ("low", "high"):
            self.log(f"fusion/{key}", float(getattr(self, key)), sync_dist=True, reduce_fx="max")


def _share_classifier(baseline: OODDetector, refiner: OODDetector) -> bool:
    """Point a ClassifierBaselines baseline at the refiner's `classifier` where both are the same network (class,
    name, normalisation, frozen-ness and every weight equal); whether it did. Only ClassifierBaselines is rewired:
    it refers to its classifier through that one attribute, while other detectors may hold hooks or bound methods
    of theirs."""
    mine, theirs = getattr(baseline, "classifier", None), getattr(refiner, "classifier", None)
    if not (isinstance(baseline, ClassifierBaselines) and isinstance(mine, Classifier)
            and isinstance(theirs, Classifier)) or mine is theirs:
        return mine is theirs and mine is not None
    if (type(mine.net), mine.name, mine.frozen) != (type(theirs.net), theirs.name, theirs.frozen):
        return False
    same = [torch.equal(mine.mean, theirs.mean), torch.equal(mine.std, theirs.std)]
    a, b = mine.state_dict(), theirs.state_dict()
    same.append(a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a))
    if not all(same):
        return False
    baseline.classifier = theirs
    return True


def _select_rows(batch: dict, rows: Tensor, size: int) -> dict:
    """The batch of `size` samples restricted to `rows`: every per-sample entry (a tensor or list of `size`) is
    indexed, "skipped" (the indices of unreadable items) emptied, anything else kept as it is."""
    picked = {}
    for key, value in batch.items():
        if key == "skipped":
            picked[key] = value[:0]
        elif isinstance(value, Tensor) and value.dim() and len(value) == size:
            picked[key] = value[rows.to(value.device)]
        elif isinstance(value, list) and len(value) == size:
            picked[key] = [value[i] for i in rows.tolist()]
        else:
            picked[key] = value
    return picked


def _split(n: int, size: int, seed: int) -> tuple[list[int], list[int]]:
    """A seeded sample of min(size, n) of range(n) and the rest, both sorted (the same on every process)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:size].sort().values.tolist(), order[size:].sort().values.tolist()
