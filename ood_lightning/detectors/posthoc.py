"""Any post-hoc detector of pytorch-ood (`pytorch_ood.detector.*`: MSP, Energy, ViM, Mahalanobis, RMD, KNN, ReAct,
ASH, DICE, SCALE, fDBD, NNGuide, SHE, ODIN, GradNorm, ...) in our evaluator, on a classifier-under-protection.

pytorch-ood's detectors take parts of a model by role in their constructors (`model` images -> logits, `encoder`
images -> penultimate features, `backbone` images -> feature maps, `head` features (or maps) -> logits, `w` / `b`
the last layer) and score either raw inputs (`predict`) or a representation (`predict_logits`,
`predict_features`, `predict_feature_maps`). The adapter hands each role its part of our `Classifier` (whose
normalisation is inside, so images stay in [0, 1]) and, for every detector with a representation interface,
computes the classifier's logits, features and maps once per batch and shares them; the others (ODIN, GradNorm,
Gram, ...) get the images. Fitting works the same way on the ID train split: representations extracted once, then
`fit_<representation>(values, labels)`, or `fit(loader of (x, y))` for the others. pytorch-ood's scores are
already higher = more OOD, our convention.
"""
from __future__ import annotations

import inspect
import time
from collections import defaultdict
from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ood_lightning.classifiers import Classifier, build_classifier
from ood_lightning.cli_messages import load_class
from ood_lightning.detectors.base import OODDetector

__all__ = ["PostHocDetector", "build_posthoc"]

REPRESENTATIONS = ("logits", "features", "feature_maps")  # pytorch-ood's predict_<r> / fit_<r> that we feed
POOLED = "pooled_maps"  # the penultimate vector as [B, D, 1, 1] maps, fed to predict_feature_maps / fit_feature_maps
ENTRY_KEYS = {"class_path", "init_args", "maps"}


def _api():
    import pytorch_ood.api as api  # imported on first use: `import ood_lightning.detectors` stays light

    return api


def build_posthoc(entry: Mapping, classifier: Classifier, gradient_parameters: str = "head"):
    """The pytorch-ood detector of a config entry {class_path, init_args, maps}, its model roles filled from
    `classifier`. A bare class name means pytorch_ood.detector.<name>. `maps`: "spatial" (default; the last
    feature maps before the pool) or "pooled" (the penultimate vector as [B, D, 1, 1], e.g. ReAct as its paper
    clips it)."""
    unknown = set(entry) - ENTRY_KEYS
    if unknown or "class_path" not in entry:
        raise ValueError(f"a pytorch-ood detector entry has class_path, optional init_args and maps; got "
                         f"{sorted(entry)}")
    path = entry["class_path"] if "." in entry["class_path"] else f"pytorch_ood.detector.{entry['class_path']}"
    try:
        cls = load_class(path)
    except (ImportError, AttributeError):
        raise ValueError(f"no pytorch-ood detector {path!r}; see pytorch_ood.detector.__all__") from None
    if not (isinstance(cls, type) and issubclass(cls, _api().Detector)):
        raise ValueError(f"{path} is not a pytorch_ood.api.Detector")
    maps = entry.get("maps", "spatial")
    if maps not in ("spatial", "pooled"):
        raise ValueError(f"maps must be 'spatial' or 'pooled', got {maps!r}")
    head = classifier.head
    if issubclass(cls, _api().FeatureMapsDetector):
        backbone = (classifier.feature_maps if maps == "spatial"
                    else lambda x: classifier.features(x)[:, :, None, None])
        head_role = classifier.logits_from_maps if maps == "spatial" else lambda m: head(m.flatten(1))
    else:
        backbone, head_role = None, head
    roles = {"model": classifier, "encoder": classifier.features, "backbone": backbone, "head": head_role,
             "w": head.weight, "b": head.bias, "param_filter": _parameter_filter(classifier, gradient_parameters)}
    wanted = inspect.signature(cls.__init__).parameters
    args = dict(entry.get("init_args") or {})
    clash = sorted(set(args) & {name for name in roles if name in wanted})
    if clash:
        raise ValueError(f"{cls.__name__}: {clash} come from the classifier, not from init_args")
    for name, value in args.items():  # YAML gives lists where a constructor takes a tensor (WeightedEBO's weights)
        if isinstance(value, list) and name in wanted and "Tensor" in str(wanted[name].annotation):
            args[name] = torch.tensor(value, dtype=torch.float32)
    detector = cls(**{name: value for name, value in roles.items() if name in wanted}, **args)
    detector.maps = maps
    return detector


def _parameter_filter(classifier: Classifier, which: str) -> Callable[[str], bool]:
    """GradNorm's parameter selection, by name inside `classifier`: the head's weight (the paper's choice) or all."""
    if which == "all":
        return lambda name: True
    if which != "head":
        raise ValueError(f"gradient_parameters must be 'head' or 'all', got {which!r}")
    weight = next(name for name, p in classifier.named_parameters() if p is classifier.head.weight)
    return lambda name: name == weight


def representation(detector) -> str | None:
    """Which of REPRESENTATIONS (or POOLED) `detector` scores from (it overrides predict_<r>), None for raw
    inputs."""
    api = _api()
    for name, base in zip(REPRESENTATIONS, (api.LogitsDetector, api.FeaturesDetector, api.FeatureMapsDetector)):
        if isinstance(detector, base) and getattr(type(detector), f"predict_{name}") is not getattr(
                base, f"predict_{name}"):
            return POOLED if name == "feature_maps" and detector.maps == "pooled" else name
    return None


def _method(action: str, rep: str) -> str:
    """pytorch-ood's method that takes representation `rep`, e.g. predict_features."""
    return f"{action}_{'feature_maps' if rep == POOLED else rep}"


class PostHocDetector(OODDetector):
    """pytorch-ood post-hoc detectors on a classifier-under-protection, several at once, one score each.

    Each entry of `detectors` (score name -> {class_path, init_args, maps}) is a `pytorch_ood.detector` class
    (a bare name like `ViM` means pytorch_ood.detector.ViM) with its own init arguments; the model parts its
    constructor asks for (model, encoder, backbone, head, w, b, GradNorm's param_filter) come from the classifier.
    Per batch the classifier runs once for all detectors that score logits, features or maps; detectors that need
    the images (ODIN, GradNorm, Gram, ...) run on their own, with autograd where they need input or parameter
    gradients (the Trainer then needs `inference_mode: false`). Detectors that require fitting (pytorch-ood's
    `requires_fit`, unless already fitted, e.g. ReAct given a threshold) are fitted at `setup("test")` on the ID
    train split (after `data.train_subset`), every process on the whole split, deterministically; scoring before
    that is refused. The fits travel with the run (`fitted_state`: the representations they were fitted on, which
    loading refits from), so predict.py and load_detector score without the benchmark. The classifier's argmax is
    saved beside the scores as `prediction`. The seconds each detector spends per test set (its own calls plus the
    shared classifier pass) go to results.json as "posthoc".

    Not per-sample deterministic, hence refused: MCD (dropout draws depend on the batch).

    Args:
        detectors: Score name -> {class_path, init_args, maps} (see `build_posthoc`).
        classifier: A classifier of ood_lightning.classifiers.build_classifier: a registry name, 'timm:<name>',
            or a spec (mapping or YAML file) of your own nn.Module.
        classifier_weights: Its local weight file; null = random initialisation (tests only), written explicitly.
        num_classes: Classifier outputs; default: read from the weight file.
        mean: Input normalisation mean; default: the one the classifier's weights expect.
        std: Input normalisation std; default as mean.
        gradient_parameters: The parameters whose gradient GradNorm-like detectors (param_filter) take: 'head'
            (the final layer's weight, GradNorm's paper) or 'all'.
    """

    extra_names = ("prediction",)
    file_options = {"classifier_weights": ()}
    refused = ("MCD",)

    def __init__(
        self,
        detectors: dict[str, dict],
        classifier: str | dict,
        classifier_weights: str | None,
        num_classes: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        gradient_parameters: str = "head",
    ):
        super().__init__()
        self.save_hyperparameters()
        if not detectors:
            raise ValueError("detectors must name at least one pytorch-ood detector")
        self.classifier = build_classifier(classifier, classifier_weights, num_classes, mean, std)
        self.score_names = tuple(detectors)
        self.detectors = {name: build_posthoc(entry, self.classifier, gradient_parameters)
                          for name, entry in detectors.items()}
        for name, det in self.detectors.items():
            if type(det).__name__ in self.refused:
                raise ValueError(f"{name}: {type(det).__name__} is not supported: its scores depend on random draws "
                                 "shared by a batch, so they would change with the batch size")
        self.representations = {name: representation(det) for name, det in self.detectors.items()}
        self._unfitted = {name for name, det in self.detectors.items()
                          if det.requires_fit and not getattr(det, "_is_fitted", False)}
        self._device: torch.device | None = None
        self.seconds: dict[str, dict[str, float]] = {}
        self._fit_inputs: dict | None = None  # the representations the detectors were fitted on (fitted_state)

    # -- fitting on the ID train split -------------------------------------------------------------------
    @property
    def needs_fit(self) -> bool:
        return bool(self._unfitted)

    @property
    def needs_gradients(self) -> bool:
        return any(isinstance(det, _api().GradientDetector) for det in self.detectors.values())

    @property
    def fit_targets(self) -> str:
        return ", ".join(sorted(self._unfitted))

    def fit(self, train_set: Dataset, make_loader: Callable[[Dataset], DataLoader],
            device: torch.device | str = "cpu", progress: bool = True) -> None:
        """Fit every detector that needs it on `train_set`: the classifier's representations extracted once and
        shared, `fit(loader of (image, label))` for detectors that read images."""
        device = torch.device(device)
        self.classifier.to(device)
        self._move(device)
        names = sorted(self._unfitted, key=self.score_names.index)
        needed = {self.representations[n] for n in names} - {None}
        if needed:
            values, labels = self._extract(train_set, make_loader, device, needed, progress)
            self._fit_representations(names, values, labels)
            self._fit_inputs = {"detectors": [n for n in names if self.representations[n] is not None],
                                "values": values, "labels": labels}
        for name in names:
            if self.representations[name] is None:
                self.detectors[name].fit(_ImagesAndLabels(make_loader(train_set), device))
        self._unfitted.clear()
        self._device = None  # statistics fitted on the CPU move to the scoring device at the next batch

    def _fit_representations(self, names: list[str], values: dict[str, Tensor], labels: Tensor) -> None:
        for name in names:
            rep = self.representations[name]
            if rep is not None:  # on the CPU, as some (KNN's sklearn index) require
                getattr(self.detectors[name], _method("fit", rep))(values[rep], labels)

    def fitted_state(self) -> dict | None:
        """The train representations (and labels) the representation detectors were fitted on: pytorch-ood keeps
        its fits in objects of its own (KNN: an sklearn index), so loading refits from these, which gives the same
        fit. Detectors fitted on images (`fit(loader)`) are not in it and stay unfitted after loading."""
        if not self._fit_inputs or not self._fit_inputs["detectors"]:
            return None
        inputs = self._fit_inputs
        return {"detectors": list(inputs["detectors"]), "labels": inputs["labels"].cpu(),
                "values": {rep: value.cpu() for rep, value in inputs["values"].items()}}

    def load_fitted_state(self, state: dict) -> None:
        names = [name for name in state["detectors"] if name in self._unfitted]
        self._fit_representations(names, state["values"], state["labels"])
        self._unfitted -= set(names)
        self._fit_inputs = state
        self._device = None

    @torch.no_grad()
    def _extract(self, dataset: Dataset, make_loader: Callable[[Dataset], DataLoader], device: torch.device,
                 needed: set[str], progress: bool) -> tuple[dict[str, Tensor], Tensor]:
        parts, labels = defaultdict(list), []
        for batch in tqdm(make_loader(dataset), desc="classifier representations of the ID train split",
                          disable=not progress, leave=False):
            if batch["index"].numel():
                values = self._represent(batch["image"].to(device), needed)
                for rep in needed:
                    parts[rep].append(values[rep].cpu())
                labels.append(batch["label"])
        if not labels:
            raise RuntimeError("no readable image in the ID train split: cannot fit the pytorch-ood detectors")
        return {rep: torch.cat(v) for rep, v in parts.items()}, torch.cat(labels)

    def _represent(self, images: Tensor, needed: set[str]) -> dict[str, Tensor]:
        """The classifier's logits / features / feature maps of `images` from one pass: when maps are needed,
        features are their pool and logits the head's output on those."""
        if "feature_maps" in needed:
            maps = self.classifier.feature_maps(images)
            feats = self.classifier.net.pool_maps(maps)
            out = {"feature_maps": maps.float(), "logits": self.classifier.head(feats).float(),
                   "features": feats.float()}
        else:
            logits, feats = self.classifier.logits_and_features(images)
            out = {"logits": logits.float(), "features": feats.float()}
        out[POOLED] = out["features"][:, :, None, None]
        return out

    # -- scoring -----------------------------------------------------------------------------------------
    def on_test_start(self) -> None:
        if self.needs_gradients and torch.is_inference_mode_enabled():
            grad = [n for n, d in self.detectors.items() if isinstance(d, _api().GradientDetector)]
            raise RuntimeError(f"{grad} need autograd at test time: set trainer.inference_mode: false in the config "
                               "(configs/baselines/cifar10_jpeg_all.yaml does)")
        self.seconds = {}

    def score(self, batch: dict, dataset: str) -> dict[str, Tensor]:
        if self._unfitted:
            raise RuntimeError(f"{sorted(self._unfitted)} must be fitted on in-distribution data first: run through "
                               "Trainer.test (setup fits them on the ID train split), call fit(), or load a run's "
                               "fit (load_fitted_state; detectors fitted on images are not saved in it)")
        images = batch["image"]
        self._move(images.device)
        seconds = self.seconds.setdefault(dataset, defaultdict(float))
        start = time.perf_counter()
        with torch.no_grad():
            shared = self._represent(images, {"logits"} | set(self.representations.values()) - {None})
        seconds["classifier"] += time.perf_counter() - start
        out = {}
        for name, det in self.detectors.items():
            start = time.perf_counter()
            rep = self.representations[name]
            if rep is not None:
                with torch.no_grad():
                    value = getattr(det, _method("predict", rep))(shared[rep])
            else:
                with torch.enable_grad() if isinstance(det, _api().GradientDetector) else torch.no_grad():
                    value = det.predict(images)
            out[name] = value.detach().to(images.device)
            seconds[name] += time.perf_counter() - start
        return {**out, "prediction": shared["logits"].argmax(-1)}

    def _move(self, device: torch.device) -> None:
        """pytorch-ood detectors are no nn.Modules: their tensors follow the classifier's device here."""
        if self._device != device:
            for det in self.detectors.values():
                det.to(device)
            self._device = device

    def results_extra(self, per_set: dict[str, dict]) -> dict:
        """Seconds per test set in the shared classifier pass and in each detector (this process's)."""
        return {"posthoc": {"seconds": {s: dict(v) for s, v in self.seconds.items()},
                            "representations": self.representations}}


class _ImagesAndLabels:
    """Our batches as pytorch-ood's fit expects them: (x, y) pairs, readable samples only, on `device`."""

    def __init__(self, loader: DataLoader, device: torch.device):
        self.loader, self.device = loader, device

    def __iter__(self):
        for batch in self.loader:
            if batch["index"].numel():
                yield batch["image"].to(self.device), batch["label"].to(self.device)

    def __len__(self) -> int:
        return len(self.loader)
