"""Named OOD benchmarks: which in-distribution (ID) and OOD sets a preset reads, from where, and in which groups.

A preset only *describes* its sets (`Plan`: for each set, the paths it needs with what belongs there, and how to
build it). `build_benchmark` checks every path of every set before building anything and raises one
FileNotFoundError listing all missing paths, then builds the sets, collecting their own file errors (an empty
folder, files missing from an image list) into one error as well. Nothing is downloaded unless asked.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset
from torchvision import transforms as T

from .sources import (NO_LABEL, DigitsSource, FileSource, ImageFolderSource, ImageListSource, TorchvisionSource,
                      Transform, subset)

ID_SET = "id"  # the name of the in-distribution test set among a benchmark's test sets; the OOD sets keep theirs


@dataclass
class Benchmark:
    """Built datasets of one benchmark; `ood` keeps the preset's order, `groups` maps e.g. "near"/"far" to OOD names."""

    name: str
    id_train: Dataset | None
    id_test: Dataset | None  # None: nothing to evaluate (folders with train images only)
    ood: dict[str, Dataset]
    groups: dict[str, list[str]] = field(default_factory=dict)

    @property
    def id_name(self) -> str:
        return (self.id_test if self.id_test is not None else self.id_train).name


@dataclass(frozen=True)
class SetSpec:
    """One dataset of a preset: the paths it needs, as (path, what belongs there), and how to build it."""

    name: str
    needs: tuple[tuple[Path, str], ...]
    build: Callable[[], Dataset]


@dataclass
class Plan:
    id_train: SetSpec | None
    id_test: SetSpec | None
    ood: list[SetSpec]
    groups: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Preset:
    """A registered benchmark: `plan(root, transform, **options)` describes its sets."""

    plan: Callable[..., Plan]
    needs_root: bool = True

    @property
    def options(self) -> list[str]:
        return [p for p in inspect.signature(self.plan).parameters if p not in ("root", "transform")]

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.plan) or ""


PRESETS: dict[str, Preset] = {}
COMMON_OPTIONS = ("train", "max_per_set", "seed")


def default_transform(image_size: int | None = None, center_crop: int | None = None) -> Transform:
    """PIL -> FloatTensor[3,H,W] in [0,1] (antialiased, bilinear).

    - image_size only: squash to (image_size, image_size), as LFDN resizes CIFAR and CelebA;
    - image_size and center_crop: shorter side to image_size, then centre crop (DiffGuard/OpenOOD ImageNet: 256, 224);
    - center_crop only: centre crop; neither: native size (sets with mixed sizes then cannot be batched).
    """
    if image_size and center_crop:
        steps = [T.Resize(image_size, antialias=True), T.CenterCrop(center_crop)]
    elif image_size:
        steps = [T.Resize((image_size, image_size), antialias=True)]
    else:
        steps = [T.CenterCrop(center_crop)] if center_crop else []
    return T.Compose([*steps, T.ToTensor()])


def build_benchmark(name: str, root: str | Path | None = None, transform: Transform | None = None, *,
                    train: bool = True, max_per_set: int | None = None, seed: int = 0, **options) -> Benchmark:
    """Build a preset's datasets after checking that every file it needs exists.

    Args:
        name: a key of PRESETS.
        root: the data folder the preset's paths are relative to (see each preset's docstring).
        transform: PIL -> tensor; `default_transform()` (ToTensor at native size) when None.
        train: build the ID train split; False for evaluation-only runs whose train images are absent
            (OpenOOD does not distribute ImageNet train images).
        max_per_set: keep a seeded random sample of at most this many items of every set (quick runs, tests).
        seed: seed of those samples.
        **options: preset-specific options (e.g. `download` for torchvision sets; `id_train`, `id_test`, `ood`
            for `folders`); an option the preset does not take is an error.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown benchmark {name!r}; presets: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    unknown = sorted(set(options) - set(preset.options))
    if unknown:
        raise ValueError(f"benchmark {name!r} does not take option(s) {', '.join(unknown)}; it takes: "
                         f"{', '.join([*preset.options, *COMMON_OPTIONS])}")
    if preset.needs_root and root is None:
        raise ValueError(f"benchmark {name!r} needs root=<data folder>.\n{preset.doc}")
    plan = preset.plan(None if root is None else Path(root), transform or default_transform(), **options)
    train_spec = plan.id_train if train else None
    roles = [] if train_spec is None else [(f"ID train set '{train_spec.name}'", train_spec)]
    roles += [] if plan.id_test is None else [(f"ID test set '{plan.id_test.name}'", plan.id_test)]
    roles += [(f"OOD set '{spec.name}'", spec) for spec in plan.ood]
    names = [spec.name for _, spec in roles]
    if len(set(names)) != len(names):
        raise ValueError(f"benchmark {name!r}: set names must be unique, got {names}")
    _check_needs(name, roles)
    built = _build_all(name, [spec for _, spec in roles])
    id_train = None if train_spec is None else built.pop(train_spec.name)
    id_test = None if plan.id_test is None else built.pop(plan.id_test.name)
    _check_classes(id_train, id_test)
    return Benchmark(
        name=name,
        id_train=None if id_train is None else subset(id_train, max_per_set, seed),
        id_test=None if id_test is None else subset(id_test, max_per_set, seed),
        ood={spec.name: subset(built[spec.name], max_per_set, seed) for spec in plan.ood},
        groups={group: list(members) for group, members in plan.groups.items()},
    )


def _check_needs(name: str, roles: list[tuple[str, SetSpec]]) -> None:
    """One FileNotFoundError for every missing path of every set (a path shared by several sets is listed once)."""
    missing: dict[Path, tuple[str, list[str]]] = {}
    for role, spec in roles:
        for path, what in spec.needs:
            if not path.exists():
                missing.setdefault(path, (what, []))[1].append(role)
    if missing:
        lines = [f"- {path}: {what}, {'; '.join(users)}" for path, (what, users) in missing.items()]
        raise FileNotFoundError(f"benchmark {name!r}: {len(missing)} path(s) missing:\n" + "\n".join(lines))


def _build_all(name: str, specs: list[SetSpec]) -> dict[str, Dataset]:
    """Build every set; file problems found while building (empty folders, unlisted files) are reported together."""
    built, problems = {}, []
    for spec in specs:
        try:
            built[spec.name] = spec.build()
        except FileNotFoundError as err:
            problems.append(f"- set '{spec.name}': {err}")
    if problems:
        raise FileNotFoundError(
            f"benchmark {name!r}: {len(problems)} set(s) could not be read:\n" + "\n".join(problems))
    return built


def _check_classes(id_train: Dataset | None, id_test: Dataset | None) -> None:
    train_classes, test_classes = getattr(id_train, "classes", []), getattr(id_test, "classes", [])
    if train_classes and test_classes and train_classes != test_classes:
        raise ValueError(f"ID train and test sets have different classes: {train_classes} vs {test_classes}; "
                         "labels would not match")


def _preset(*names: str, needs_root: bool = True) -> Callable:
    def register(plan: Callable[..., Plan]) -> Callable[..., Plan]:
        for name in names:
            PRESETS[name] = Preset(plan, needs_root)
        return plan
    return register


# --- set descriptions -------------------------------------------------------------------------------------------

def _folder(name: str, path: Path, what: str, transform: Transform, ood: bool = False) -> SetSpec:
    return SetSpec(name, ((path, what),), lambda: ImageFolderSource(path, transform, name, ood))


def _mnist_digits(name: str, root: Path, digits: range, part: str, transform: Transform, ood: bool = False) -> SetSpec:
    """MNIST test JPEGs of `digits` (labels 0.. in that order, -1 for OOD): part "test" keeps the files numbered a
    multiple of 5, "train" the others, "all" every file."""
    folder = root / "mnist/test"

    def build() -> FileSource:
        samples = [(path, NO_LABEL if ood else label) for label, digit in enumerate(digits)
                   for path in sorted((folder / str(digit)).glob("*.jpg"))
                   if part == "all" or (int(path.stem) % 5 == 0) == (part == "test")]
        return FileSource(folder, samples, name, transform, classes=() if ood else [str(d) for d in digits])

    return SetSpec(name, ((folder, "MNIST test JPEGs, one folder per digit (extract mnist.tar.gz)"),), build)


def _torchvision(name: str, kind: str, root: Path, split: str, transform: Transform, download: bool,
                 ood: bool = False) -> SetSpec:
    path = TorchvisionSource.expected_path(kind, root, split)
    needs = () if download else ((path, f"torchvision {kind} files (place them there, or pass download=True)"),)
    return SetSpec(name, needs, lambda: TorchvisionSource(kind, root, split, transform, download, name, ood))


def _image_list(name: str, list_file: Path, images: Path, transform: Transform, ood: bool = False) -> SetSpec:
    needs = ((list_file, "OpenOOD image list (from OpenOOD's benchmark_imglist.zip)"),
             (images, "OpenOOD image folder (unzip OpenOOD's dataset zips here)"))
    return SetSpec(name, needs, lambda: ImageListSource(list_file, images, transform, name, ood))


# --- presets ----------------------------------------------------------------------------------------------------

@_preset("digits", needs_root=False)
def _digits(root: Path | None, transform: Transform) -> Plan:
    """Offline demo, no files needed: scikit-learn's 8x8 digits 0-4 in distribution (a fixed 2/3 train, 1/3 test
    split), all digits 5-9 as the OOD set 'digits_5_9'."""
    def digits(name: str, chosen: range, split: str, ood: bool = False) -> SetSpec:
        return SetSpec(name, (), lambda: DigitsSource(chosen, split, transform, name, ood))
    return Plan(id_train=digits("digits_0_4_train", range(5), "train"),
                id_test=digits("digits_0_4", range(5), "test"),
                ood=[digits("digits_5_9", range(5, 10), "all", ood=True)])


@_preset("cifar10_jpeg")
def _cifar10_jpeg(root: Path, transform: Transform) -> Plan:
    """The offline real data of ../shared/data, extracted under root (`tar xzf cifar10.tar.gz -C root`, same for
    tin and mnist):
      root/cifar10/train/<class>/*.jpg   ID train (CIFAR-10 JPEGs)
      root/cifar10/test/<class>/*.jpg    ID test
      root/tin/val/*.jpg                 near-OOD 'tin' (Tiny-ImageNet val, 32 px)
      root/mnist/test/<digit>/*.jpg      far-OOD 'mnist' (labels ignored)"""
    return Plan(
        id_train=_folder("cifar10_train", root / "cifar10/train", "CIFAR-10 train JPEGs, one folder per class "
                         "(extract cifar10.tar.gz)", transform),
        id_test=_folder("cifar10", root / "cifar10/test", "CIFAR-10 test JPEGs, one folder per class "
                        "(extract cifar10.tar.gz)", transform),
        ood=[_folder("tin", root / "tin/val", "Tiny-ImageNet val JPEGs (extract tin.tar.gz)", transform, ood=True),
             _folder("mnist", root / "mnist/test", "MNIST test JPEGs (extract mnist.tar.gz)", transform, ood=True)],
        groups={"near": ["tin"], "far": ["mnist"]},
    )


def tin_half(file_name: str) -> str:
    """The half of Tiny-ImageNet val a file belongs to, from its name alone: "val" for an even file number
    (val_0.jpg, val_2.jpg, ...), "test" for an odd one. Settings are chosen on the validation half and reported on
    the test half, so a reported number never steered a choice. Even / odd interleaves the whole numbering (5,000
    files each of val_0 ... val_9999), so neither half is an early or a late block of the files."""
    number = re.fullmatch(r"val_(\d+)", Path(file_name).stem)
    if number is None:
        raise ValueError(f"{file_name!r} is not a Tiny-ImageNet val file name (val_<number>.jpg); the split into "
                         "halves reads the number")
    return "val" if int(number[1]) % 2 == 0 else "test"


def _tin_half(name: str, root: Path, half: str, transform: Transform) -> SetSpec:
    """One half of root/tin/val (see :func:`tin_half`) as an OOD set."""
    folder = root / "tin/val"

    def build() -> FileSource:
        samples = [(path, NO_LABEL) for path in sorted(folder.glob("*.jpg")) if tin_half(path.name) == half]
        if not samples:
            raise FileNotFoundError(f"{folder} holds no val_<number>.jpg file of the {half} half")
        return FileSource(folder, samples, name, transform)

    return SetSpec(name, ((folder, "Tiny-ImageNet val JPEGs (extract tin.tar.gz)"),), build)


@_preset("cifar10_jpeg_tin_halves")
def _cifar10_jpeg_tin_halves(root: Path, transform: Transform) -> Plan:
    """cifar10_jpeg for choosing settings without tuning on a reported set: Tiny-ImageNet val split by file number
    into 'tin_val' (even numbers: choose settings on it, with ID data) and 'tin_test' (odd numbers: report it, with
    'mnist'). tin_val belongs to no group, so the near/far averages hold reported sets only. A preset of its own
    because cifar10_jpeg's whole 'tin' set is what the published tables and the classifier baselines measure.
    Same files as cifar10_jpeg, extracted under root:
      root/cifar10/train/<class>/*.jpg   ID train (CIFAR-10 JPEGs)
      root/cifar10/test/<class>/*.jpg    ID test
      root/tin/val/val_<N>.jpg           near-OOD 'tin_val' (N even), 'tin_test' (N odd)
      root/mnist/test/<digit>/*.jpg      far-OOD 'mnist' (labels ignored)"""
    jpeg = _cifar10_jpeg(root, transform)
    return Plan(
        id_train=jpeg.id_train,
        id_test=jpeg.id_test,
        ood=[_tin_half("tin_val", root, "val", transform), _tin_half("tin_test", root, "test", transform),
             *[spec for spec in jpeg.ood if spec.name == "mnist"]],
        groups={"near": ["tin_test"], "far": ["mnist"]},
    )


@_preset("mnist_0_4")
def _mnist_0_4(root: Path, transform: Transform) -> Plan:
    """Semantic shift inside one domain, from the offline MNIST JPEGs (DiffGuard on your own data): digits 0-4 in
    distribution, digits 5-9 the near-OOD set, Tiny-ImageNet and CIFAR-10 far OOD. MNIST's 10,000 test images are
    split by file number: digits 0-4 numbered a multiple of 5 are the ID test part (1,061), the others the ID train
    part (4,078); the rule mixes MNIST's easier first and harder second 5,000 evenly. Extracted under root:
      root/mnist/test/<digit>/NNNNN.jpg  ID train / ID test (0-4), OOD 'mnist_5_9' (5-9, labels ignored)
      root/tin/val/*.jpg                 far-OOD 'tin'
      root/cifar10/test/<class>/*.jpg    far-OOD 'cifar10' (labels ignored)"""
    return Plan(
        id_train=_mnist_digits("mnist_0_4_train", root, range(5), "train", transform),
        id_test=_mnist_digits("mnist_0_4", root, range(5), "test", transform),
        ood=[_mnist_digits("mnist_5_9", root, range(5, 10), "all", transform, ood=True),
             _folder("tin", root / "tin/val", "Tiny-ImageNet val JPEGs (extract tin.tar.gz)", transform, ood=True),
             _folder("cifar10", root / "cifar10/test", "CIFAR-10 test JPEGs (extract cifar10.tar.gz)", transform,
                     ood=True)],
        groups={"near": ["mnist_5_9"], "far": ["tin", "cifar10"]},
    )


def _lfdn_ood(root: Path, transform: Transform, download: bool) -> list[SetSpec]:
    """LFDN's OOD sets after the CIFAR one, in the reference's order (folders from the ODIN / LFDN bundles)."""
    return [
        _folder("isun", root / "isun", "iSUN images (folder of JPEGs, ODIN's iSUN.tar.gz)", transform, ood=True),
        _torchvision("svhn", "svhn", root / "svhn", "test", transform, download, ood=True),
        _folder("lsun_crop", root / "lsun_crop", "LSUN-crop images (ODIN's LSUN.tar.gz)", transform, ood=True),
        _folder("lsun_resize", root / "lsun_resize", "LSUN-resize images (ODIN's LSUN_resize.tar.gz)", transform,
                ood=True),
        _folder("dtd", root / "dtd/images", "DTD/Textures images, one folder per texture", transform, ood=True),
        _folder("places365", root / "places365", "Places365 OOD images (folder from the LFDN authors' bundle)",
                transform, ood=True),
    ]


_LFDN_LAYOUT = """
      root/cifar10/cifar-10-batches-py/   torchvision CIFAR-10 (ID for lfdn_cifar10, OOD otherwise)
      root/cifar100/cifar-100-python/     torchvision CIFAR-100
      root/isun/                          iSUN (ODIN)
      root/svhn/test_32x32.mat            torchvision SVHN test
      root/lsun_crop/                     LSUN-crop (ODIN's LSUN)
      root/lsun_resize/                   LSUN-resize (ODIN)
      root/dtd/images/<texture>/          DTD / Textures
      root/places365/                     Places365 (LFDN authors' bundle)
    Folders may hold class subfolders or images directly. Option `download=True` fetches the torchvision sets.
    LFDN squashes images to a square: use image_size=224 (the paper) and no centre crop."""


def _lfdn_cifar(id_kind: str, other: str, root: Path, transform: Transform, download: bool) -> Plan:
    return Plan(
        id_train=_torchvision(f"{id_kind}_train", id_kind, root / id_kind, "train", transform, download),
        id_test=_torchvision(id_kind, id_kind, root / id_kind, "test", transform, download),
        ood=[_torchvision(other, other, root / other, "test", transform, download, ood=True),
             *_lfdn_ood(root, transform, download)],
    )


@_preset("lfdn_cifar10")
def _lfdn_cifar10(root: Path, transform: Transform, download: bool = False) -> Plan:
    return _lfdn_cifar("cifar10", "cifar100", root, transform, download)


@_preset("lfdn_cifar100")
def _lfdn_cifar100(root: Path, transform: Transform, download: bool = False) -> Plan:
    return _lfdn_cifar("cifar100", "cifar10", root, transform, download)


@_preset("lfdn_celeba")
def _lfdn_celeba(root: Path, transform: Transform, download: bool = False) -> Plan:
    celeba = root / "celeba"
    what = "CelebA images (an ImageFolder: one or more subfolders of JPEGs)"
    return Plan(
        id_train=_folder("celeba_train", celeba, what, transform),
        id_test=_folder("celeba", celeba, what, transform),
        ood=[_torchvision("cifar100", "cifar100", root / "cifar100", "test", transform, download, ood=True),
             *_lfdn_ood(root, transform, download)],
    )


_lfdn_cifar10.__doc__ = f"""LFDN's CIFAR-10 benchmark: CIFAR-10 in distribution; CIFAR-100, iSUN, SVHN, LSUN-crop,
    LSUN-resize, DTD and Places365 as OOD (no near/far groups). Layout under root:{_LFDN_LAYOUT}"""
_lfdn_cifar100.__doc__ = f"""LFDN's CIFAR-100 benchmark: as lfdn_cifar10 with CIFAR-100 in distribution and CIFAR-10
    as the first OOD set. Layout under root:{_LFDN_LAYOUT}"""
_lfdn_celeba.__doc__ = f"""LFDN's CelebA benchmark: root/celeba/ (an ImageFolder) in distribution, OOD sets as
    lfdn_cifar10. As in the reference code, the ID test set is the training folder itself; use the `folders`
    preset for a held-out split. Layout under root:
      root/celeba/<any subfolder>/*.jpg   CelebA{_LFDN_LAYOUT}"""


# OpenOOD keeps small-image sets in images_classic/ and ImageNet-scale ones in images_largescale/
_OPENOOD_CLASSIC = {"cifar10", "cifar100", "tin", "mnist", "svhn", "texture", "textures", "places365"}
_OPENOOD_V15 = {  # preset id: (benchmark_imglist folder, near, far), from OpenOOD v1.5 evaluation_api/datasets.py
    "cifar10": ("cifar10", ["cifar100", "tin"], ["mnist", "svhn", "texture", "places365"]),
    "cifar100": ("cifar100", ["cifar10", "tin"], ["mnist", "svhn", "texture", "places365"]),
    "imagenet200": ("imagenet200", ["ssb_hard", "ninco"], ["inaturalist", "textures", "openimage_o"]),
    "imagenet1k": ("imagenet", ["ssb_hard", "ninco"], ["inaturalist", "textures", "openimage_o"]),
}


def _openood(id_name: str, ood: list[str], groups: dict[str, list[str]], root: Path, transform: Transform) -> Plan:
    lists = root / "benchmark_imglist" / id_name

    def images(name: str) -> Path:
        return root / ("images_classic" if name in _OPENOOD_CLASSIC else "images_largescale")

    return Plan(
        id_train=_image_list(f"{id_name}_train", lists / f"train_{id_name}.txt", images(id_name), transform),
        id_test=_image_list(id_name, lists / f"test_{id_name}.txt", images(id_name), transform),
        ood=[_image_list(name, lists / f"test_{name}.txt", images(name), transform, ood=True) for name in ood],
        groups=groups,
    )


def _register_openood_v15(key: str, id_name: str, near: list[str], far: list[str]) -> None:
    def plan(root: Path, transform: Transform) -> Plan:
        return _openood(id_name, near + far, {"near": near, "far": far}, root, transform)

    plan.__doc__ = f"""OpenOOD v1.5 {key}: near-OOD {', '.join(near)}; far-OOD {', '.join(far)}. root is OpenOOD's
    data folder:
      root/benchmark_imglist/{id_name}/train_{id_name}.txt, test_{id_name}.txt, test_<ood name>.txt
      root/images_classic/ and root/images_largescale/ (list paths are relative to these)
    OpenOOD preprocessing: CIFAR image_size=32; ImageNet image_size=256, center_crop=224. OpenOOD does not ship
    ImageNet train images: pass train=False for evaluation-only runs."""
    _preset(f"openood_v1.5/{key}")(plan)


for _key, (_id_name, _near, _far) in _OPENOOD_V15.items():
    _register_openood_v15(_key, _id_name, _near, _far)


@_preset("openood_v1.0/imagenet")
def _openood_v10_imagenet(root: Path, transform: Transform) -> Plan:
    """DiffGuard's ImageNet benchmark (OpenOOD v1.0 lists): ImageNet-1K in distribution; Species, iNaturalist,
    OpenImage-O and ImageNet-O as OOD. No groups: v1.0 filed all four as near-OOD while v1.5 calls iNaturalist and
    OpenImage-O far, so each set is reported on its own. root is OpenOOD's data folder:
      root/benchmark_imglist/imagenet/train_imagenet.txt, test_imagenet.txt, test_species.txt,
        test_inaturalist.txt, test_openimage_o.txt, test_imagenet_o.txt
      root/images_largescale/ (list paths are relative to it)
    DiffGuard preprocessing: image_size=256, center_crop=224 (GDM) or 256 (LDM)."""
    return _openood("imagenet", ["species", "inaturalist", "openimage_o", "imagenet_o"], {}, root, transform)


@_preset("folders", needs_root=False)
def _folders(root: Path | None, transform: Transform, id_test: str | None = None,
             ood: dict[str, str] | None = None, id_train: str | None = None) -> Plan:
    """Your own images: `id_train` and/or `id_test` folders in distribution, `ood` a mapping name -> folder of OOD
    images. Folders hold class subfolders (labels = sorted class index) or images directly (labels -1). Relative
    paths are taken from root when root is given. With in-distribution images only (no `ood`, or no `id_test`) a
    detector trains and calibrates on them (train.py), and there is no test to run."""
    if id_test is None and id_train is None:
        raise ValueError("benchmark 'folders' needs id_train (a folder of in-distribution train images) and/or "
                         "id_test (in-distribution test images), plus ood (a mapping name -> folder of OOD images) "
                         "to evaluate on")
    if id_test is None and ood:
        raise ValueError("benchmark 'folders': OOD folders are compared with in-distribution test images; give "
                         "id_test too")
    ood = ood or {}

    def resolve(path: str) -> Path:
        return Path(path) if root is None else root / path

    id_name = None if id_test is None else _folder_set_name(resolve(id_test))
    return Plan(
        id_train=None if id_train is None else _folder(_train_set_name(resolve(id_train)), resolve(id_train),
                                                       "in-distribution train images", transform),
        id_test=None if id_test is None else _folder(id_name, resolve(id_test), "in-distribution test images",
                                                     transform),
        ood=[_folder(name, resolve(path), "OOD images", transform, ood=True) for name, path in ood.items()],
    )


def _train_set_name(path: Path) -> str:
    """A train set's name from its own folder, marked as train: 'cifar10_train' for cifar10/train, 'id_train' for
    id_train, 'mine_train' for mine."""
    name = _folder_set_name(path)
    return name if name.lower().endswith("train") else f"{name}_train"


def _folder_set_name(path: Path) -> str:
    """A set's name from its folder: 'cifar10' for cifar10/test (split folder names say nothing)."""
    generic = {"train", "test", "val", "valid", "validation", "images"}
    return path.parent.name if path.name.lower() in generic and path.parent.name else path.name
