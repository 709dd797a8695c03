"""Post-hoc baselines on a classifier under protection: MSP, MaxLogit, Energy, KNN and ViM (OpenOOD's `msp`, `mls`,
`ebo`, `knn`, `vim` postprocessors), all from one forward pass of the classifier per batch.

OpenOOD's postprocessors return a confidence (higher = ID); here every score is an OOD score (higher = OOD), so each
is the negative of OpenOOD's `conf` and AUROC / FPR95 come out identical. The score functions are plain tensor
functions of logits and penultimate features, so they can be checked against the formulas and re-used (e.g. for
DiffGuard's combination with baselines). KNN and ViM are fitted on the in-distribution train split before testing.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ood_lightning.classifiers import build_classifier
from ood_lightning.detectors.base import OODDetector

__all__ = ["ClassifierBaselines", "energy_score", "fit_vim", "knn_score", "mls_score", "msp_score", "vim_score"]

SCORES = ("msp", "mls", "ebo", "knn", "vim")
FITTED = ("knn", "vim")  # scores that need statistics of the ID train features
STATISTICS = ("knn_bank", "vim_origin", "vim_basis", "vim_alpha")  # what fitting them computes


# --------------------------------------------------------------------------------------- score functions
def msp_score(logits: Tensor) -> Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel 2017), negated: -max_c softmax(logits)_c."""
    return -logits.softmax(-1).amax(-1)


def mls_score(logits: Tensor) -> Tensor:
    """Maximum logit (Hendrycks et al. 2022), negated: -max_c logits_c."""
    return -logits.amax(-1)


def energy_score(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Free energy (Liu et al. 2020): E(x) = -T logsumexp(logits / T); OOD inputs have higher energy."""
    return -temperature * torch.logsumexp(logits / temperature, -1)


def knn_score(features: Tensor, bank: Tensor, k: int, chunk: int = 8192) -> Tensor:
    """Euclidean distance from each row of `features` to its k-th nearest row of `bank` (Sun et al. 2022).

    Both are expected L2-normalised (the method's point: distances between directions). The bank is searched in
    chunks, keeping the k smallest distances so far, so memory stays O(B x (chunk + k)). OpenOOD's faiss index
    returns *squared* distances; the ranking, hence every metric, is the same.
    """
    if not 1 <= k <= len(bank):
        raise ValueError(f"knn needs 1 <= k <= {len(bank)} (train features), got k={k}")
    best = features.new_empty(len(features), 0)
    for part in bank.split(chunk):
        best = torch.cat([best, torch.cdist(features, part)], 1)
        best = best.topk(min(k, best.shape[1]), dim=1, largest=False).values
    return best[:, k - 1]


def fit_vim(features: Tensor, logits: Tensor, weight: Tensor, bias: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """ViM statistics (Wang et al. 2022) from ID train features [N, F] and logits [N, C] of a head (W [C, F], b [C]).

    - origin u = -pinv(W) b: the point the logits map to 0, so features are centred where the head is neutral;
    - principal space P: the top-`dim` eigenvectors of the (uncentred, about u) covariance (x-u)^T (x-u) / N;
      returned is the basis R of its complement [F, F - dim] (the eigenvectors of the smallest eigenvalues);
    - residual norm r(x) = ||(x - u) R||, and alpha = mean_train(max logit) / mean_train(r), which puts the
      "virtual logit" alpha r on the scale of the real logits.
    Computed in float64; returns (origin [F], basis [F, F - dim], alpha []) in float32.
    """
    f_dim = features.shape[1]
    if not 0 < dim < f_dim:
        raise ValueError(f"vim_dim must be in [1, {f_dim - 1}] (feature dim {f_dim}), got {dim}")
    w, b, x = weight.double(), bias.double(), features.double()
    origin = -torch.linalg.pinv(w) @ b
    centred = x - origin
    _, vectors = torch.linalg.eigh(centred.T @ centred / len(x))  # ascending eigenvalues
    basis = vectors[:, : f_dim - dim]
    alpha = logits.double().amax(-1).mean() / torch.linalg.vector_norm(centred @ basis, dim=-1).mean()
    return origin.float(), basis.float(), alpha.float()


def vim_score(features: Tensor, logits: Tensor, origin: Tensor, basis: Tensor, alpha: Tensor) -> Tensor:
    """ViM as an OOD score: alpha ||(x - u) R|| - logsumexp(logits), i.e. virtual logit minus (negative) energy.

    This is minus OpenOOD's `conf = energy - vlogit`: large residuals off the principal space, or low energy, = OOD.
    """
    residual = torch.linalg.vector_norm((features - origin) @ basis, dim=-1)
    return alpha * residual - torch.logsumexp(logits, -1)


# --------------------------------------------------------------------------------------------- detector
class ClassifierBaselines(OODDetector):
    """Classifier-based OOD scores (OpenOOD v1.5 postprocessors), every enabled one from one forward pass.

    Scores (all higher = more OOD): `msp` -max softmax, `mls` -max logit, `ebo` energy -T logsumexp(logits / T),
    `knn` distance to the k-th nearest L2-normalised ID train feature, `vim` alpha x residual norm off the ID
    principal feature space - logsumexp(logits). Each sample's predicted class is saved beside its scores.
    `knn` and `vim` are fitted at `setup("test")` by one pass of the classifier over the datamodule's ID train split
    (after `data.train_subset`, if set), once per detector instance; under DDP every process fits on its own,
    deterministically, on the whole split.

    Args:
        classifier: Architecture name, a key of `ood_lightning.classifiers.CLASSIFIERS` (cifar_densenet_bc100,
            cifar_resnet20, cifar_resnet56, resnet18_32x32, resnet50), `timm:<model name>`, or your own nn.Module
            as a spec (a mapping or a YAML file: class_path, init_args, mean, std, head, ...; see
            `ood_lightning.classifiers.build_classifier`).
        classifier_weights: Local weight file of that classifier; null = random initialisation (tests only), which
            has to be written explicitly: there is no default.
        scores: Scores to compute, any of msp, mls, ebo, knn, vim (knn and vim need the ID train split).
        num_classes: Classifier outputs; default: read from the weight file.
        mean: Input normalisation mean; default: the one the classifier's published weights expect.
        std: Input normalisation std; default as mean.
        ebo_temperature: Energy temperature T (OpenOOD: 1).
        knn_k: The k of KNN (OpenOOD: 50 for CIFAR, 1000 for ImageNet-1K).
        knn_train_fraction: Fraction of the train features kept as KNN neighbours, a seeded sample (OpenOOD: 1 for
            CIFAR, 0.01 for ImageNet-1K). When vim is off, only these images go through the classifier.
        vim_dim: Dimension D of ViM's principal space, below the feature dimension; default min(F // 2, 256)
            (OpenOOD: 256 of ResNet-18's 512-d and of ResNet-50's 2048-d features).
        seed: Seed of the KNN train sample.
    """

    extra_names = ("prediction",)  # the classifier's argmax, saved per sample in scores/<set>.npz
    file_options = {"classifier_weights": ()}  # init arguments that name local files (see config_files.py)

    def __init__(
        self,
        classifier: str | dict,
        classifier_weights: str | None,
        scores: list[str] = ["msp", "mls", "ebo"],  # noqa: B006 (LightningCLI reads the default; never mutated)
        num_classes: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        ebo_temperature: float = 1.0,
        knn_k: int = 50,
        knn_train_fraction: float = 1.0,
        vim_dim: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        unknown = [s for s in scores if s not in SCORES]
        if unknown or not scores or len(set(scores)) != len(scores):
            raise ValueError(f"scores must be distinct names among {', '.join(SCORES)}, got {list(scores)}")
        if not 0 < knn_train_fraction <= 1:
            raise ValueError(f"knn_train_fraction must be in (0, 1], got {knn_train_fraction}")
        if knn_k < 1:
            raise ValueError(f"knn_k must be at least 1, got {knn_k}")
        self.score_names = tuple(scores)
        self.classifier = build_classifier(classifier, classifier_weights, num_classes, mean, std)
        f_dim = self.classifier.feature_dim
        self.vim_dim = min(f_dim // 2, 256) if vim_dim is None else int(vim_dim)
        if "vim" in scores and not 0 < self.vim_dim < f_dim:
            raise ValueError(f"vim_dim must be in [1, {f_dim - 1}] for {classifier}'s {f_dim}-d features, "
                             f"got {self.vim_dim}")
        # Statistics fitted on the train split at setup; not saved in checkpoints (the split may change), but with
        # the run that fitted them (fitted_state; prediction/fitted.py).
        for name in STATISTICS:
            self.register_buffer(name, None, persistent=False)

    # -- fitting on the ID train split -------------------------------------------------------------------
    @property
    def needs_fit(self) -> bool:
        return ("knn" in self.score_names and self.knn_bank is None) or (
            "vim" in self.score_names and self.vim_basis is None)

    @property
    def fit_targets(self) -> str:
        fitted = [s for s in self.score_names if s in FITTED]
        return f"scores {fitted} (drop them from model.init_args.scores to score without a train split)"

    def fit(self, train_set: Dataset, make_loader: Callable[[Dataset], DataLoader],
            device: torch.device | str = "cpu", progress: bool = True) -> None:
        """Fit KNN's neighbour bank and ViM's statistics on the classifier's features of `train_set`."""
        hp = self.hparams
        use_knn, use_vim = "knn" in self.score_names, "vim" in self.score_names
        knn_n = max(1, round(hp.knn_train_fraction * len(train_set)))
        if use_knn and not use_vim:  # only KNN's sample needs features
            train_set = Subset(train_set, _seeded_sample(len(train_set), knn_n, hp.seed).tolist())
        logits, feats = self._extract(train_set, make_loader, torch.device(device), progress)
        if use_knn:
            bank = F.normalize(feats, dim=1, eps=1e-10)
            if len(bank) > knn_n:
                bank = bank[_seeded_sample(len(bank), knn_n, hp.seed).to(bank.device)]
            if hp.knn_k > len(bank):
                raise ValueError(f"knn_k={hp.knn_k} exceeds the {len(bank)} train features kept for KNN")
            self.knn_bank = bank
        if use_vim:
            head = self.classifier.head
            self.vim_origin, self.vim_basis, self.vim_alpha = fit_vim(feats, logits, head.weight, head.bias,
                                                                      self.vim_dim)

    def fitted_state(self) -> dict | None:
        state = {name: getattr(self, name).detach().cpu() for name in STATISTICS if getattr(self, name) is not None}
        return state or None

    def load_fitted_state(self, state: dict) -> None:
        unknown = set(state) - set(STATISTICS)
        if unknown:
            raise ValueError(f"ClassifierBaselines: unknown fitted statistics {sorted(unknown)}; known: {STATISTICS}")
        device = next(self.classifier.parameters()).device
        for name, value in state.items():
            setattr(self, name, value.to(device))

    @torch.no_grad()
    def _extract(self, dataset: Dataset, make_loader: Callable[[Dataset], DataLoader], device: torch.device,
                 progress: bool) -> tuple[Tensor, Tensor]:
        self.classifier.to(device)
        logits, feats, skipped = [], [], 0
        for batch in tqdm(make_loader(dataset), desc="classifier features of the ID train split",
                          disable=not progress, leave=False):
            skipped += int(batch["skipped"].numel())
            if batch["index"].numel():
                out = self.classifier.logits_and_features(batch["image"].to(device))
                logits.append(out[0].float())
                feats.append(out[1].float())
        if not feats:
            raise RuntimeError("no readable image in the ID train split: cannot fit knn/vim")
        if skipped and progress:
            print(f"ClassifierBaselines: {skipped} unreadable train image(s) skipped while fitting knn/vim")
        return torch.cat(logits), torch.cat(feats)

    # -- scoring ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, batch: dict, dataset: str) -> dict[str, Tensor]:
        if self.needs_fit:
            raise RuntimeError("knn/vim are not fitted: run through Trainer.test (setup fits them), call fit(), or "
                               "load a run's fit (load_fitted_state; predict.py and load_detector read fitted.pt)")
        logits, feats = (t.float() for t in self.classifier.logits_and_features(batch["image"]))
        compute = {
            "msp": lambda: msp_score(logits),
            "mls": lambda: mls_score(logits),
            "ebo": lambda: energy_score(logits, self.hparams.ebo_temperature),
            "knn": lambda: knn_score(F.normalize(feats, dim=1, eps=1e-10), self.knn_bank, self.hparams.knn_k),
            "vim": lambda: vim_score(feats, logits, self.vim_origin, self.vim_basis, self.vim_alpha),
        }
        with torch.autocast(logits.device.type, enabled=False):  # bf16/fp16 runs: the classifier, not the stats
            return {**{name: compute[name]() for name in self.score_names}, "prediction": logits.argmax(-1)}


def _seeded_sample(n: int, m: int, seed: int) -> Tensor:
    """m of range(n), sorted, drawn with a fixed seed (same on every process)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:m].sort().values
