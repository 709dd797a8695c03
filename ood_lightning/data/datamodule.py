"""The LightningDataModule: an in-distribution train split, the in-distribution test split and named OOD test sets,
batched by `collate`, which drops undecodable images and reports their indices."""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .feature_cache import BatchInputs, CachedFeatures, cached_features
from .presets import ID_SET, build_benchmark, default_transform
from .sources import NO_LABEL, SubsetSource, sample_path, subset

DEFAULT_CALIBRATION_SIZE = 1000


def _is_skipped(item: dict | None) -> bool:
    return item is None or any(value is None for value in item.values())


def _stack(values: list):
    if isinstance(values[0], torch.Tensor):
        return torch.stack(values)
    if isinstance(values[0], (bool, int, float)):
        return torch.tensor(values)  # Python ints -> int64
    return values


def _empty(value):
    if value is None or isinstance(value, (torch.Tensor, float)):
        return torch.empty(0)
    return torch.empty(0, dtype=torch.int64) if isinstance(value, int) else []


def collate(items: list[dict | None]) -> dict:
    """Batch samples, dropping skipped ones.

    An item is skipped when it is None or one of its values is None (the skip marker of `sources.py`, which keeps
    its "index"). Tensors of any key ("image", "feature", ...) are stacked, ints become int64 tensors, floats
    float tensors, anything else stays a list. "skipped" (int64[K]) holds the dataset indices of the skipped items
    (-1 for a bare None, whose index is unknown). When every item was skipped, each tensor key holds an empty
    tensor of shape [0] (the image size is unknown then) and "label"/"index" empty int64 tensors.
    """
    kept = [item for item in items if not _is_skipped(item)]
    skipped = [-1 if item is None else int(item["index"]) for item in items if _is_skipped(item)]
    if kept:
        batch = {key: _stack([item[key] for item in kept]) for key in kept[0]}
    else:
        template = next((item for item in items if item is not None), {"image": None, "label": NO_LABEL, "index": -1})
        batch = {key: _empty(value) for key, value in template.items()}
    batch["skipped"] = torch.tensor(skipped, dtype=torch.int64)
    return batch


class OODDataModule(L.LightningDataModule):
    """In-distribution train/test splits and named OOD test sets of one benchmark preset.

    Samples are dicts {"image": [3,H,W] in [0,1], "label", "index"}; the models normalise. A model that reads
    frozen-backbone features declares them in its `inputs` (a `BatchInputs`, see feature_cache.py): `setup` then
    serves the train split (fit) or the test sets (test) with the cached features under their keys, and with the
    images only when the model reads images too (`served`). Evaluation loaders never shuffle or drop samples.

    Args:
        benchmark: Benchmark preset: digits, cifar10_jpeg, mnist_0_4, lfdn_cifar10, lfdn_cifar100, lfdn_celeba,
            openood_v1.5/{cifar10,cifar100,imagenet200,imagenet1k}, openood_v1.0/imagenet or folders.
        root: Data folder the preset's paths are relative to (each preset's docstring shows its layout);
            not needed by digits, optional for folders.
        image_size: Resize target: a square of this side, or with center_crop the shorter side; None keeps the
            native size.
        center_crop: Centre-crop side after resizing (e.g. 224 after image_size 256 for ImageNet); None: no crop.
        batch_size: Samples per batch, for training and evaluation.
        num_workers: DataLoader worker processes (0 reads in the main process).
        train_subset: Keep a seeded random sample of this many train images (None: all).
        eval_subset: Keep a seeded random sample of this many images of every test set (None: all).
        data_seed: Seed of the subsets and of the training order. Named apart from the models' `seed` (their noise,
            samples or labels): Lightning logs the model's and the datamodule's hyperparameters as one table and
            stops a run in which the two share a key with different values.
        download: Let presets with torchvision sets (lfdn_*) download CIFAR/SVHN; nothing is ever downloaded
            otherwise.
        id_train: folders preset: folder of in-distribution train images (optional).
        id_test: folders preset: folder of in-distribution test images (needed with ood).
        ood: folders preset: OOD set name -> folder of its images (none: train and calibrate only); on the command line
            --data.ood '{tin: /data/tin, mnist: /data/mnist}' or one set at a time: --data.ood.tin /data/tin.
        train: Build the in-distribution train split; false for evaluation-only runs whose train images are not on
            disk (OpenOOD does not distribute ImageNet train images).

    Calibration (prediction/calibration.py) reads `calibration_set`: in-distribution train images the model is not
    fit on, chosen by file with a seed (`data_seed`). `calibration_size` (set by the entry points' --calibration_size,
    outside the data section so that it leaves every config hash as it was) is how many: None takes up to
    DEFAULT_CALIBRATION_SIZE of the train images that `train_subset` leaves out, so training is unchanged (none when
    the subset is the whole split); a number N takes them from those first and holds the rest out of training.
    `predict_set` is what `predict_dataloader` serves (new images; calibration images).
    """

    def __init__(
        self,
        benchmark: str = "digits",
        root: str | None = None,
        image_size: int | None = 64,
        center_crop: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        train_subset: int | None = None,
        eval_subset: int | None = None,
        data_seed: int = 0,
        download: bool = False,
        id_train: str | None = None,
        id_test: str | None = None,
        ood: dict[str, str] | None = None,
        train: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.benchmark_name = benchmark
        self.transform = default_transform(image_size, center_crop)
        self.train_set: Dataset | None = None
        self.test_sets: dict[str, Dataset] = {}
        self.groups: dict[str, list[str]] = {}
        self.id_name = ""
        self.test_sources: dict[str, Dataset] = {}
        self.calibration_size: int | None = None
        self.calibration_set: Dataset | None = None
        self.predict_set: Dataset | None = None
        self._built = False

    def _build(self):
        hp = self.hparams
        folder_options = {"id_train": hp.id_train, "id_test": hp.id_test, "ood": hp.ood}
        options = {key: value for key, value in folder_options.items() if value is not None}
        if hp.download:
            options["download"] = True
        return build_benchmark(hp.benchmark, hp.root, self.transform, train=hp.train, **options)

    def prepare_data(self) -> None:
        """Downloads (torchvision sets, only with download=True) happen here, once per node."""
        if self.hparams.download:
            self._build()

    def setup(self, stage: str | None = None) -> None:
        """Build the benchmark once; then serve the stage's datasets with the attached model's inputs. Predicting
        reads only `predict_set` (images, whatever the model reads: it computes its own features then)."""
        if stage == "predict":
            return
        self.build_sets()
        if stage == "fit" and self.train_set is not None:
            self.train_set = self.served(self.train_set, "train")
            if not len(self.train_set):
                raise RuntimeError(f"train: no image could be read ({len(getattr(self.train_set, 'skipped', ()))} "
                                   "unreadable); the model learns from the in-distribution train images")
        if stage == "test":
            if not self.test_sets:
                raise ValueError(f"benchmark {self.benchmark_name!r} has no OOD test sets here, so there is nothing to "
                                 "evaluate (folders: give --data.id_test and --data.ood). Without them train.py trains "
                                 "and calibrates, and predict.py scores new images (docs/predict.md).")
            self.test_sets = {name: self.served(dataset, name) for name, dataset in self.test_sets.items()}

    @property
    def has_test(self) -> bool:
        """Whether the benchmark has OOD sets to evaluate on (folders may hold in-distribution images only)."""
        self.build_sets()
        return bool(self.test_sets)

    def model_inputs(self) -> BatchInputs:
        """What the trainer's model reads from a batch (its `inputs`); images alone without a trainer or model."""
        model = self.trainer.lightning_module if self.trainer is not None else None
        return getattr(model, "inputs", BatchInputs())

    def served(self, dataset: Dataset, name: str) -> Dataset:
        """`dataset` as the model reads it: unchanged for a model of images; else its items carry the cached
        features of every `FeatureInput` (computed on the first process of each node, the others wait), and the
        images only when the model reads images too. A dataset served before is returned as it is."""
        inputs = self.model_inputs()
        if not inputs.features or isinstance(dataset, CachedFeatures):
            return dataset
        trainer = self.trainer
        features = {
            feature.key: cached_features(feature, dataset, self.loader, trainer.strategy.root_device, name=name,
                                         builder=trainer.local_rank == 0, barrier=trainer.strategy.barrier,
                                         quiet=not trainer.is_global_zero)
            for feature in inputs.features
        }
        return CachedFeatures(features, name=name, images=dataset if inputs.images else None)

    def build_sets(self) -> None:
        """Build the benchmark's datasets (once), without serving them to a model (calibration reads images)."""
        if not self._built:
            self._build_sets()

    def _build_sets(self) -> None:
        benchmark = self._build()
        if ID_SET in benchmark.ood:
            raise ValueError(f"'{ID_SET}' names the in-distribution test set; rename the OOD set called '{ID_SET}'")
        hp = self.hparams
        self.train_set, self.calibration_set = calibration_split(benchmark.id_train, hp.train_subset,
                                                                 self.calibration_size, hp.data_seed)
        sets = {} if benchmark.id_test is None or not benchmark.ood else {ID_SET: benchmark.id_test, **benchmark.ood}
        self.test_sets = {name: subset(ds, hp.eval_subset, hp.data_seed) for name, ds in sets.items()}
        self.test_sources = dict(self.test_sets)  # as built, before `served` wraps them: where each sample comes from
        self.groups = benchmark.groups
        self.id_name = benchmark.id_name
        self._built = True

    def loader(self, dataset: Dataset, sampler: Sampler | None = None) -> DataLoader:
        """The one loader factory: never drops samples; workers persist across epochs; pinned memory only with CUDA.

        Without a sampler the loader reads the dataset in order. Datasets held in memory (``in_memory = True``,
        e.g. cached features) are read in the main process: workers only help decoding, and their extra threads
        slow a 2-core machine down.
        """
        workers = 0 if getattr(dataset, "in_memory", False) else self.hparams.num_workers
        return DataLoader(dataset, batch_size=self.hparams.batch_size, sampler=sampler, drop_last=False,
                          num_workers=workers, persistent_workers=workers > 0, collate_fn=collate,
                          pin_memory=torch.cuda.is_available())

    def training_order(self, dataset: Dataset) -> DistributedSampler:
        """Each epoch one permutation seeded by (data_seed, epoch) alone, split over the processes of the run.

        Process r of W takes positions r, r + W, r + 2W, ... of the permutation, so at every step the W batches of
        size B together hold the samples that one process with batch W x B holds: training does not depend on the
        process count (the permutation does not depend on the global random generator either). When the set does
        not divide by W, the sampler repeats a few samples so every process runs the same number of steps.
        Lightning keeps a DistributedSampler it is given and calls its set_epoch every epoch.
        """
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.hparams.data_seed)

    def test_paths(self, name: str, indices) -> list[str]:
        """The files (see sources.sample_path) of test set `name`'s samples at dataset `indices`."""
        source = self.test_sources.get(name)
        return [sample_path(source, int(i)) for i in indices] if source is not None else []

    def predict_dataloader(self) -> DataLoader:
        if self.predict_set is None:
            raise RuntimeError("OODDataModule.predict_set is not set: predict.py / calibration give it the images")
        return self.loader(self.predict_set)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise RuntimeError(f"benchmark {self.benchmark_name!r} has no in-distribution train split here "
                               "(setup() not run, train=False, or folders without id_train)")
        return self.loader(self.train_set, sampler=self.training_order(self.train_set))

    def val_dataloader(self) -> DataLoader | list:
        """The in-distribution test set, for models that validate while they train (configs/classifier/,
        configs/diffusion/); models without a validation_step (the detectors) skip it. Without one (`folders` with
        id_train only) there is nothing to validate on, and Lightning skips validation."""
        if ID_SET not in self.test_sets:
            rank_zero_info("No in-distribution test images (--data.id_test): training without validation.")
            return []
        return self.loader(self.test_sets[ID_SET])

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per test set, in `test_sets` order: "id" first, then the OOD sets."""
        return [self.loader(dataset) for dataset in self.test_sets.values()]


def calibration_split(train: Dataset | None, train_subset: int | None, size: int | None, seed: int
                      ) -> tuple[Dataset | None, Dataset | None]:
    """(the train set the model is fit on, the in-distribution calibration set), disjoint by file.

    The train set is `subset(train, train_subset, seed)` as always. Calibration images come from the train images it
    leaves out (a seeded sample of them); only an explicit `size` larger than those takes the rest out of training.
    """
    if train is None:
        return None, None
    fitted = subset(train, train_subset, seed)
    chosen = fitted.indices if isinstance(fitted, SubsetSource) else list(range(len(train)))
    left_out = np.setdiff1d(np.arange(len(train)), chosen)
    rng = np.random.default_rng([seed, 1])  # a stream of its own: the train subset's draw stays as it was
    wanted = min(len(left_out), DEFAULT_CALIBRATION_SIZE) if size is None else int(size)
    if wanted < 0 or wanted >= len(train):
        raise ValueError(f"--calibration_size {size}: must be between 0 and {len(train) - 1} (the ID train images)")
    picked = rng.permutation(left_out)[:wanted].tolist()
    if len(picked) < wanted:  # held out of training: the train set changes
        held = rng.permutation(chosen)[:wanted - len(picked)].tolist()
        picked += held
        fitted = SubsetSource(train, sorted(set(chosen) - set(held)))
    calibration = SubsetSource(train, sorted(picked)) if picked else None
    return fitted, calibration
