"""Robust image decoding: any readable image becomes 8-bit RGB, any unreadable one an `ImageDecodeError`.

PIL's safety switches stay as PIL ships them: `ImageFile.LOAD_TRUNCATED_IMAGES` stays False, so a truncated JPEG
raises instead of coming back half grey, and the decompression-bomb limit `Image.MAX_IMAGE_PIXELS` stays on. It is
enforced strictly: PIL only warns about an image between that limit and twice it, and would then decode it (a 100 KB
PNG can hold 10000 x 10000 pixels); here such a file is unreadable before any pixel is decoded. The datasets in
`sources.py` turn an `ImageDecodeError` into a skipped, reported sample; this module only decides what "readable"
means.

Mode conversions (chosen to match `Image.convert("RGB")`, which torchvision's ImageFolder and OpenOOD use, so
scores match the reference pipelines):
- alpha (RGBA, LA, PA, P with transparency) is dropped, not composited: the colour channels are kept as stored;
- 16-bit greyscale (I;16*, and I holding 16-bit PNG/TIFF data) is scaled 0..65535 -> 0..255, not clipped;
- everything else (L, 1, P, CMYK, YCbCr, LAB, HSV, F) goes through PIL's own conversion.
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image


class ImageDecodeError(Exception):
    """An image file that cannot be read: missing, empty, truncated, corrupt, too large, or not an image."""


def load_rgb(source: str | os.PathLike | bytes) -> Image.Image:
    """Decode a file path or encoded bytes fully into an RGB image; raise `ImageDecodeError` naming the file."""
    what = "<bytes>" if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as image:
            _refuse_bomb(image)
            image.load()  # decode now: a truncated or corrupt file fails here, not later inside a transform
            return to_rgb(image)
    except Exception as err:  # PIL reports broken files as OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageDecodeError(f"cannot decode image {what}: {type(err).__name__}: {err}") from err


def _refuse_bomb(image: Image.Image) -> None:
    """Raise PIL's DecompressionBombError where `Image.open` only warned: the header declares too many pixels."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and image.width * image.height > limit:
        raise Image.DecompressionBombError(
            f"image size {image.width} x {image.height} exceeds Image.MAX_IMAGE_PIXELS = {limit} pixels, could be "
            "a decompression bomb (raise PIL's Image.MAX_IMAGE_PIXELS to read such images)")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image of any mode to a new 8-bit RGB image (see the module docstring for the rules)."""
    if image.mode == "I" or image.mode.startswith("I;16"):
        return _sixteen_bit_to_rgb(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when a palette with transparency goes straight to RGB
    return image.convert("RGB")


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """Scale 16-bit grey to 8 bits (65535 -> 255, 32768 -> 128); PIL's own convert would clip at 255."""
    values = np.asarray(image).astype(np.float64)
    grey = np.rint(np.clip(values, 0, 65535) * (255 / 65535)).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")
