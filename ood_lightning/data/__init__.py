"""Data sources, benchmark presets and the DataModule."""
from .presets import PRESETS, Benchmark, build_benchmark, default_transform
from .datamodule import OODDataModule, collate
from .feature_cache import BatchInputs, CachedFeatures, FeatureInput
from .decoding import ImageDecodeError, load_rgb, to_rgb
from .sources import (DigitsSource, ImageFolderSource, ImageListSource, ImageSource, SubsetSource,
                      TorchvisionSource, skip_marker, subset)

__all__ = [
    "PRESETS", "Benchmark", "build_benchmark", "default_transform", "OODDataModule", "collate", "BatchInputs",
    "CachedFeatures", "FeatureInput", "ImageDecodeError",
    "load_rgb", "to_rgb", "DigitsSource", "ImageFolderSource", "ImageListSource", "ImageSource", "SubsetSource",
    "TorchvisionSource", "skip_marker", "subset",
]
