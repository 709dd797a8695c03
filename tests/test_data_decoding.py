"""Decoding: every image mode becomes 8-bit RGB; unreadable files are skipped, reported and never crash a loader."""
import logging

import numpy as np
import pytest
from PIL import Image, ImageFile

from data_helpers import jpeg_bytes, make_flat, noise_image, write_corrupt_files
from ood_lightning.data import ImageDecodeError, ImageFolderSource, collate, load_rgb


def _rgb(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    array = np.asarray(image)
    assert array.dtype == np.uint8 and array.shape[2] == 3
    return array


def test_pil_safety_switches_stay_on():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert Image.MAX_IMAGE_PIXELS is not None


def test_grayscale_png(tmp_path):
    Image.new("L", (4, 3), 100).save(tmp_path / "g.png")
    array = _rgb(load_rgb(tmp_path / "g.png"))
    assert array.shape == (3, 4, 3) and (array == 100).all()


def test_rgba_png_drops_alpha(tmp_path):
    Image.new("RGBA", (4, 4), (10, 20, 30, 0)).save(tmp_path / "a.png")
    assert (_rgb(load_rgb(tmp_path / "a.png")) == [10, 20, 30]).all()


def test_la_png(tmp_path):
    Image.new("LA", (4, 4), (200, 50)).save(tmp_path / "la.png")
    assert (_rgb(load_rgb(tmp_path / "la.png")) == 200).all()


def test_palette_png_with_transparency(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 0
    image.putpixel((0, 0), 0)
    image.save(tmp_path / "p.png", transparency=0)
    array = _rgb(load_rgb(tmp_path / "p.png"))
    assert (array[0, 0] == [0, 0, 0]).all() and (array[1, 1] == [255, 0, 0]).all()


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[65535, 32768, 0, 257]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode.startswith("I")
    array = _rgb(load_rgb(tmp_path / "16.png"))
    assert array[0, :, 0].tolist() == [255, 128, 0, 1]


def test_cmyk_jpeg(tmp_path):
    noise_image((8, 8), mode="CMYK").save(tmp_path / "cmyk.jpg")
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    assert _rgb(load_rgb(tmp_path / "cmyk.jpg")).shape == (8, 8, 3)


def test_bytes_input():
    assert load_rgb(jpeg_bytes((5, 7))).size == (5, 7)


def test_unreadable_files_raise_naming_the_file(tmp_path):
    for path in write_corrupt_files(tmp_path):
        with pytest.raises(ImageDecodeError, match=path.name):
            load_rgb(path)
    with pytest.raises(ImageDecodeError, match="missing.png"):
        load_rgb(tmp_path / "missing.png")


def test_decompression_bomb_limit_is_honoured(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageDecodeError, match="big.png"):
        load_rgb(tmp_path / "big.png")


def test_corrupt_files_are_skipped_and_reported_once(tmp_path, caplog):
    make_flat(tmp_path, n=3)
    write_corrupt_files(tmp_path)
    dataset = ImageFolderSource(tmp_path)
    bad = {i for i, (path, _) in enumerate(dataset.samples) if path.stem in {"truncated", "zero", "text"}}
    assert len(dataset) == 6 and len(bad) == 3
    with caplog.at_level(logging.WARNING, logger="ood_lightning.data.sources"):
        items = [dataset[i] for i in range(len(dataset))] + [dataset[i] for i in bad]
    assert len(caplog.records) == 3  # once per file, not once per access
    assert all(dataset.samples[i][0].name in caplog.text for i in bad)
    batch = collate(items[: len(dataset)])
    assert set(batch["skipped"].tolist()) == bad
    assert sorted(batch["index"].tolist()) == sorted(set(range(6)) - bad)
    assert batch["image"].shape == (3, 3, 16, 16)
