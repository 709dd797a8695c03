"""What DiffGuard's two paths share: the classifier-under-protection, the distances, the label each image is guided
toward (oracle mode), the autograd check and the image grids. `gdm/` and `ldm/` add the diffusion part."""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.utils import make_grid

from ood_lightning.classifiers import build_classifier
from ood_lightning.data.presets import ID_SET
from ood_lightning.data.sources import NO_LABEL
from ood_lightning.detectors.base import OODDetector
from ood_lightning.errors import UnlabelledSetError
from ood_lightning.noise import sample_seed

from .similarity import build_distances


class DiffGuardDetector(OODDetector):
    """Base of DiffGuardGDM and DiffGuardLDM; subclasses call `self.save_hyperparameters()` after this __init__.

    Scores: one per entry of `similarities` (distances, higher = OOD); `prediction` (the classifier's label) and
    `target` (the label guided toward) are saved per sample beside them.
    """

    extra_names: tuple[str, ...] = ("prediction", "target")
    # init arguments that name local files (checked before any work, see config_files.py)
    file_options = {"diffusion_model": (), "classifier_weights": (), "vgg16_weights": (), "dists_weights": (),
                    "lpips_weights": ()}

    def __init__(self, classifier: str, classifier_weights: str | None, num_classes: int | None,
                 mean: list[float] | None, std: list[float] | None, reference: str, similarities: list[str],
                 oracle: bool, vgg16_weights: str | None, dists_weights: str | None, lpips_weights: str | None,
                 grid_images: int, seed: int, helper_measures: tuple[str, ...] = ()):
        super().__init__()
        self.oracle, self.grid_images, self.seed = bool(oracle), int(grid_images), int(seed)
        if reference not in ("unguided", "input"):
            raise ValueError(f"reference must be 'unguided' or 'input', got {reference!r}")
        if not similarities or len(set(similarities)) != len(similarities):
            raise ValueError(f"similarities must be distinct names, got {list(similarities)}")
        self.score_names = tuple(similarities)
        self.classifier = build_classifier(classifier, classifier_weights, num_classes, mean, std).requires_grad_(False)
        self.weight_files = {"vgg16_weights": vgg16_weights, "dists_weights": dists_weights,
                             "lpips_weights": lpips_weights}
        # dists and lpips share one read of the VGG16 file, also with `helper_measures`: measures the sampler uses
        # besides the scores (GDM's DISTS stop rule), in self.helpers
        built = build_distances(list(dict.fromkeys([*similarities, *helper_measures])), classifier=self.classifier,
                                **self.weight_files)
        self.distances = torch.nn.ModuleDict({name: built[name] for name in similarities})
        self.helpers = torch.nn.ModuleDict({name: built[name] for name in helper_measures})
        self._grids_done: set[str] = set()

    def on_test_start(self) -> None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("DiffGuard needs autograd at test time (Clean Grad, Grad-CAM): set "
                               "trainer.inference_mode: false in the config (the configs in configs/diffguard/ do)")
        self._grids_done = set()

    def target_labels(self, batch: dict, prediction: Tensor, dataset: str) -> Tensor:
        """The label each image is guided toward: the prediction; in oracle mode the true label for the
        in-distribution set and, for OOD sets, a random label seeded by (seed, set, index), so it depends on
        neither the batch nor the process. Oracle mode refuses in-distribution images without a label."""
        if not self.oracle:
            return prediction
        if dataset == ID_SET:
            labels = batch["label"]
            if (labels == NO_LABEL).any():
                raise UnlabelledSetError(
                    f"oracle: true guides in-distribution images toward their true label, but the "
                    f"in-distribution set '{ID_SET}' has images without one (label {NO_LABEL}; e.g. a folders "
                    "benchmark whose in-distribution folder has no class subfolders). Give the in-distribution "
                    "images as one subfolder per class (an ImageFolder), or set model.init_args.oracle false")
            return labels.to(prediction)
        labels = [int(torch.randint(self.classifier.num_classes, (), generator=torch.Generator().manual_seed(
            sample_seed(self.seed, f"{dataset}/oracle", i)))) for i in batch["index"].tolist()]
        return torch.tensor(labels, dtype=prediction.dtype, device=prediction.device)

    def distances_between(self, reference: Tensor, synthesis: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            return {name: distance(reference, synthesis).float() for name, distance in self.distances.items()}

    def save_grid(self, dataset: str, rows: dict[str, Tensor]) -> None:
        """Show the first `grid_images` images of each set a process sees, one row per entry of `rows`
        ([N, 3, H, W] in [0, 1]): the evaluation writes rank 0's to grids/<set>.png and the image loggers. The
        rows but the input are also this batch's `pictures` (predict.py's contact sheet shows them)."""
        self.pictures = {name: images.detach() for name, images in rows.items() if name != "input"}
        if self.hparams.grid_images <= 0 or dataset in self._grids_done:
            return
        n = min(self.hparams.grid_images, *(len(images) for images in rows.values()))
        grid = make_grid(torch.cat([images[:n] for images in rows.values()]).detach().float().cpu(), nrow=n,
                         padding=1)
        self._grids_done.add(dataset)
        self.show(dataset, grid, caption=f"rows: {', '.join(rows)}")
