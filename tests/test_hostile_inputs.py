"""Hostile inputs, table-driven: every broken file, odd image mode, symlink trap, malformed image list and missing
folder must end in one clear outcome, never a crash, a hang or a silent drop:
- converted: loads as a float [3,H,W] tensor in [0,1];
- skipped: the DataModule batch reports its index under "skipped" and a warning names the file (end to end,
  results.json's n_skipped counts it);
- refused: setup raises ValueError/FileNotFoundError, before any image is scored, naming the culprit.
The test prints what it tried and what happened to each case (`pytest -s`) and writes the table to its tmp dir."""
from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import pkgutil
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader

from data_helpers import jpeg_bytes, noise_image, write_image
import ood_lightning
from ood_lightning.data import ImageListSource, OODDataModule, collate

CONVERTED, SKIPPED, REFUSED = "converted", "skipped", "refused"
TIME_LIMIT_S = 20  # per case: a scan or decode that takes longer counts as a hang
Observed = tuple[str, str]  # (outcome, detail)


# --- hostile files: each writer puts one entry into an image folder and returns the path the dataset should list --

def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(width: int, height: int, idat: bytes) -> bytes:
    """An 8-bit greyscale PNG with the given header size and compressed pixel stream (valid CRCs)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@functools.cache
def _deflate_bomb() -> bytes:
    """A complete ~90 KB PNG of 9500 x 9500 black pixels, just above PIL's MAX_IMAGE_PIXELS (89.5 M), where PIL only
    warns and would decode it; compressed row by row, so the pixels are never held in memory here."""
    side, packer = 9500, zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + pixels
    return _png(side, side, b"".join(packer.compress(row) for _ in range(side)) + packer.flush())


def _truncated_jpeg(folder: Path) -> Path:
    data = jpeg_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return folder / "truncated.jpg"


def _zero_byte_jpeg(folder: Path) -> Path:
    (folder / "zero.jpg").write_bytes(b"")
    return folder / "zero.jpg"


def _text_named_jpg(folder: Path) -> Path:
    (folder / "notes.jpg").write_text("this is not an image\n")
    return folder / "notes.jpg"


def _header_bomb(folder: Path) -> Path:
    """A 67-byte PNG whose header declares 100000 x 100000 pixels (above twice PIL's limit)."""
    (folder / "header_bomb.png").write_bytes(_png(100_000, 100_000, zlib.compress(b"\0" * 2)))
    return folder / "header_bomb.png"


def _deflate_bomb_file(folder: Path) -> Path:
    (folder / "deflate_bomb.png").write_bytes(_deflate_bomb())
    return folder / "deflate_bomb.png"


def _sixteen_bit_png(folder: Path) -> Path:
    Image.fromarray(np.array([[0, 257, 32768, 65535]] * 3, dtype=np.uint16)).save(folder / "grey16.png")
    return folder / "grey16.png"


def _palette_png(folder: Path) -> Path:
    image = Image.new("P", (5, 3), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.save(folder / "palette.png", transparency=0)
    return folder / "palette.png"


def _cmyk_jpeg(folder: Path) -> Path:
    noise_image((6, 4), mode="CMYK").save(folder / "cmyk.jpg")
    return folder / "cmyk.jpg"


def _la_png(folder: Path) -> Path:
    Image.new("LA", (4, 6), (200, 50)).save(folder / "grey_alpha.png")
    return folder / "grey_alpha.png"


def _png_named_jpg(folder: Path) -> Path:
    noise_image((7, 5)).save(folder / "really_a_png.jpg", format="PNG")
    return folder / "really_a_png.jpg"


def _dangling_symlink(folder: Path) -> Path:
    os.symlink(folder / "gone.jpg", folder / "dangling.jpg")
    return folder / "dangling.jpg"


def _self_symlink(folder: Path) -> Path:
    os.symlink(folder / "self_loop.jpg", folder / "self_loop.jpg")
    return folder / "self_loop.jpg"


def _folder_symlink_loop(folder: Path) -> Path:
    """sub/loop -> .. : scanning must neither hang nor list the images again under sub/loop/..."""
    image = write_image(folder / "sub" / "inside.png", size=(9, 9))
    os.symlink("..", folder / "sub" / "loop")
    return image


# name -> (writer, expected outcome); the end-to-end test puts all of them into one OOD folder
HOSTILE_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "truncated JPEG": (_truncated_jpeg, SKIPPED),
    "zero-byte JPEG": (_zero_byte_jpeg, SKIPPED),
    "text file named .jpg": (_text_named_jpg, SKIPPED),
    "PNG bomb, header 100000x100000": (_header_bomb, SKIPPED),
    "PNG bomb, 90 KB -> 9500x9500": (_deflate_bomb_file, SKIPPED),
    "16-bit PNG (I;16)": (_sixteen_bit_png, CONVERTED),
    "palette PNG + transparency": (_palette_png, CONVERTED),
    "CMYK JPEG": (_cmyk_jpeg, CONVERTED),
    "LA PNG": (_la_png, CONVERTED),
    "PNG bytes named .jpg": (_png_named_jpg, CONVERTED),
    "dangling symlink .jpg": (_dangling_symlink, SKIPPED),
    "symlink to itself .jpg": (_self_symlink, SKIPPED),
    "folder symlink loop sub/loop -> ..": (_folder_symlink_loop, CONVERTED),
}


# --- probes: each builds its input under a fresh folder and reports the outcome ----------------------------------

@dataclass(frozen=True)
class Case:
    """`probe(folder)` returns the observed outcome or raises; a refusal must name everything in `names`."""

    name: str
    expected: str
    probe: Callable[[Path], Observed]
    names: tuple[str, ...] = ()


def _outcomes(loader) -> dict[int, Observed]:
    """Outcome of every dataset index a loader delivered (batch size 1, native image size)."""
    seen = {}
    for batch in loader:
        for index in batch["skipped"].tolist():
            seen[index] = (SKIPPED, "in batch['skipped']")
        for index, image in zip(batch["index"].tolist(), batch["image"]):
            valid = image.dtype == torch.float32 and image.dim() == 3 and image.shape[0] == 3
            in_range = valid and 0 <= float(image.min()) and float(image.max()) <= 1
            seen[index] = (CONVERTED, f"float32 {list(image.shape)}") if in_range else (
                "bad tensor", f"{image.dtype} {list(image.shape)}")
    return seen


def _file_case(name: str, write: Callable[[Path], Path], expected: str, caplog) -> Case:
    """The entry goes into an OOD folder beside one good image, read through the DataModule."""
    def probe(folder: Path) -> Observed:
        write_image(folder / "id" / "good.png")
        write_image(folder / "ood" / "good.png")
        culprit = write(folder / "ood")
        dm = OODDataModule("folders", root=str(folder), image_size=None, batch_size=1, id_test="id",
                           ood={"ood": "ood"})
        dm.setup("test")
        dataset = dm.test_sets["ood"]
        listed = [i for i, (path, _) in enumerate(dataset.samples) if path == culprit]
        if len(listed) != 1 or len(dataset) != 2:
            return "dropped or duplicated", f"listed {len(listed)}x among {len(dataset)} samples"
        try:
            outcome, detail = _outcomes(dm.test_dataloader()[1]).get(listed[0], ("dropped silently", ""))
        except Exception as err:  # noqa: BLE001 (the table reports it)
            return "crashed mid-run", f"{type(err).__name__}: {err}"
        if outcome == SKIPPED and not any(culprit.name in r.getMessage() for r in caplog.records):
            return "skipped unnamed", "no warning names the file"
        return outcome, detail
    return Case(name, expected, probe)


def _list_case(name: str, content: bytes, expected: str, *names: str) -> Case:
    """An OpenOOD-style list test_x.txt over data/a.png and data/b.png."""
    def probe(folder: Path) -> Observed:
        write_image(folder / "data" / "a.png")
        write_image(folder / "data" / "b.png", size=(8, 8))
        (folder / "test_x.txt").write_bytes(content)
        dataset = ImageListSource(folder / "test_x.txt", folder / "data")
        outcomes = _outcomes(DataLoader(dataset, batch_size=1, collate_fn=collate))
        kinds = sorted({outcome for outcome, _ in outcomes.values()})
        return (kinds[0], f"{len(outcomes)} images, labels {dataset.labels}") if len(kinds) == 1 else (
            "mixed", str(outcomes))
    return Case(name, expected, probe, ("test_x.txt", *names))


def _setup_case(name: str, options: dict, make: Callable[[Path], None], *names: str) -> Case:
    """A DataModule whose setup must refuse; `options` paths are relative to the case folder."""
    def probe(folder: Path) -> Observed:
        make(folder)
        dm = OODDataModule(**{**options, "root": str(folder / options["root"])})
        dm.setup("test")
        return "accepted", f"sets {list(dm.test_sets)}"
    return Case(name, REFUSED, probe, names)


def _make_id_and(*empty: str, files: dict[str, str] | None = None) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        write_image(folder / "root" / "id" / "good.png")
        for sub in empty:
            (folder / "root" / sub).mkdir()
        for path, text in (files or {}).items():
            (folder / "root" / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / "root" / path).write_text(text)
    return make


def _cases(caplog) -> list[Case]:
    folders = {"benchmark": "folders", "root": "root", "id_test": "id"}
    return [
        *[_file_case(name, write, expected, caplog) for name, (write, expected) in HOSTILE_FILES.items()],
        _list_case("list: missing file", b"a.png 0\nb.png 1\ngone.png 2\n", REFUSED, "line 3", "gone.png"),
        _list_case("list: line without label", b"a.png 0\nb.png\n", REFUSED, "line 2"),
        _list_case("list: non-integer label", b"a.png 0\nb.png 1.5\n", REFUSED, "line 2"),
        _list_case("list: label --1", b"a.png --1\n", REFUSED, "line 1"),
        _list_case("list: extra word field", b"a.png 0\n\nb.png 1 extra\n", REFUSED, "line 3"),
        _list_case("list: extra number field", b"a.png 0\nb.png 1 2\n", REFUSED, "line 2", "b.png 1"),
        _list_case("list: not UTF-8 (binary)", b"a.png 0\n\x89PNG\r\n\x1a\n\x00\x00", REFUSED, "line 2"),
        _list_case("list: only blank lines", b"\n  \n\n", REFUSED, "lists no images"),
        _list_case("list: blank lines, tab, CRLF", b"\n  \na.png\t0\r\n\nb.png 1\n\n", CONVERTED),
        _list_case("list: UTF-8 byte-order mark", b"\xef\xbb\xbfa.png 0\nb.png 1\n", CONVERTED),
        _setup_case("benchmark root does not exist", {"benchmark": "cifar10_jpeg", "root": "no_such_root"},
                    lambda folder: None, "no_such_root"),
        _setup_case("empty OOD folder", {**folders, "ood": {"o": "empty_ood"}}, _make_id_and("empty_ood"),
                    "empty_ood", "set 'o'"),
        _setup_case("OOD folder without images", {**folders, "ood": {"o": "docs"}},
                    _make_id_and(files={"docs/README.txt": "no images here"}), "docs", "set 'o'"),
        _setup_case("no OOD set at all", {**folders, "ood": {}}, _make_id_and(), "ood"),
    ]


def _observe(case: Case, folder: Path) -> Observed:
    """Run a probe under a time bound; an exception is a refusal only if it is a clear one naming the culprit."""
    folder.mkdir()
    result: dict = {}

    def run() -> None:
        try:
            result["observed"] = case.probe(folder)
        except Exception as err:  # noqa: BLE001 (classified below)
            result["error"] = err

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(TIME_LIMIT_S)
    if worker.is_alive():
        return "hung", f"still running after {TIME_LIMIT_S} s"
    if "observed" in result:
        return result["observed"]
    err = result["error"]
    message = f"{type(err).__name__}: {err}".replace(f"{folder}/", "").replace("\n", " | ")
    if not isinstance(err, (ValueError, FileNotFoundError)):
        return "crashed", message
    unnamed = [part for part in case.names if part not in str(err)]
    return ("refused unclearly", f"does not name {unnamed}: {message}") if unnamed else (REFUSED, message)


def _table(rows: list[tuple[str, str, str, str]]) -> str:
    rows = [("case", "expected", "observed", "detail"), *rows]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    return "\n".join("  ".join([*(text.ljust(width) for text, width in zip(row, widths)), row[3][:110]])
                     for row in rows)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_every_hostile_input_has_a_clear_outcome(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="ood_lightning.data.sources")
    rows = []
    for number, case in enumerate(_cases(caplog)):
        outcome, detail = _observe(case, tmp_path / f"case_{number:02d}")
        rows.append((case.name, case.expected, outcome, detail))
    table = _table(rows)
    (tmp_path / "hostile_inputs.txt").write_text(table + "\n")
    counts = dict(Counter(row[2] for row in rows))
    print(f"\n{table}\n{len(rows)} hostile inputs tried, observed: {counts}")
    wrong = [row for row in rows if row[1] != row[2]]
    assert not wrong, f"{len(wrong)} of {len(rows)} hostile inputs tried had the wrong outcome:\n{table}"


def test_no_module_turns_pil_safety_off():
    """Some libraries set `Image.MAX_IMAGE_PIXELS = None` on import; none of ours may, nor anything they import."""
    import evaluate  # noqa: F401 (imported for its side effects)
    import train  # noqa: F401 (imported for its side effects)

    for module in pkgutil.walk_packages(ood_lightning.__path__, "ood_lightning."):
        importlib.import_module(module.name)
    assert Image.MAX_IMAGE_PIXELS is not None and ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- end to end: evaluate.py over a folders benchmark full of hostile files ---------------------------------------

@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_evaluate_counts_skipped_hostile_files(tmp_path):
    """evaluate.py over a folders benchmark holding every hostile file finishes; results.json counts the skips."""
    import evaluate

    data = tmp_path / "data"
    for label in ("cat", "dog"):
        for i in range(2):
            write_image(data / "id" / label / f"{i}.png", size=(12, 12), seed=i)
    _truncated_jpeg(data / "id" / "cat")
    hostile = data / "hostile"
    write_image(hostile / "good.png", size=(20, 10))
    for write, _ in HOSTILE_FILES.values():
        write(hostile)
    n_skipped = sum(expected == SKIPPED for _, expected in HOSTILE_FILES.values())
    out = tmp_path / "results"
    start = time.perf_counter()
    evaluate.main([
        "--model.class_path", "ood_lightning.detectors.baselines.ClassifierBaselines",
        "--model.init_args.classifier", "cifar_resnet20", "--model.init_args.classifier_weights", "null",
        "--model.init_args.num_classes", "10", "--model.init_args.scores", "[msp]",
        "--results_dir", str(out),
        "--data.benchmark", "folders", "--data.root", str(data), "--data.id_test", "id",
        "--data.ood", "{hostile: hostile}", "--data.image_size", "16", "--data.batch_size", "4",
        "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--plots", "false",
    ])
    results = json.loads((out / "results.json").read_text())
    print(f"\nevaluate.py on hostile folders: {time.perf_counter() - start:.1f} s, n_skipped {results['n_skipped']}")
    assert results["n_skipped"] == {"id": 1, "hostile": n_skipped}
    assert results["n_id"] == 4
    hostile_row = results["scores"]["msp"]["hostile"]
    assert hostile_row["n_skipped"] == n_skipped
    assert hostile_row["n_ood"] == 1 + len(HOSTILE_FILES) - n_skipped  # good.png + converted ones, each once
    assert Image.MAX_IMAGE_PIXELS is not None


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_ood_set_without_one_readable_image_is_reported_not_fatal(tmp_path):
    """Every file unreadable: the data side skips and counts all of them; the report must not throw the run away."""
    from ood_lightning.metrics import ScoreCollector
    from ood_lightning.report import build_results

    scored, unreadable = ScoreCollector(["msp"]), ScoreCollector(["msp"])
    scored.update({"msp": torch.rand(4)}, torch.arange(4))
    unreadable.add_skipped(torch.arange(3))
    results = build_results({"id": scored.compute(), "broken": unreadable.compute()}, benchmark="folders",
                            detector="ClassifierBaselines", groups={}, wall_time=None)
    assert results["n_skipped"] == {"id": 0, "broken": 3}
    row = results["scores"]["msp"]["broken"]
    assert row["auroc"] is None and row["n_ood"] == 0 and row["n_skipped"] == 3
    from ood_lightning.report import markdown_table, write_results

    assert "| msp | broken | n/a |" in markdown_table(results)
    write_results(tmp_path, results, {"id": scored.compute(), "broken": unreadable.compute()}, plots=True)
    assert json.loads((tmp_path / "results.json").read_text())["scores"]["msp"]["broken"]["auroc"] is None
