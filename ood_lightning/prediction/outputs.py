"""What predict.py writes: predictions.csv (one row per image, in input order) and a contact sheet of the most-OOD
and most-ID images with their scores."""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ood_lightning.data.decoding import ImageDecodeError, load_rgb
from ood_lightning.io import atomic_write, atomic_write_text
from ood_lightning.prediction.calibration import decisions

TILE = 112  # pixels of one contact-sheet image
CAPTION = 28  # pixels of text under it
LABEL = 12  # pixels of the line naming a picture row (DiffGuard's synthesis)


def prediction_rows(names: Sequence[str], result: dict, errors: dict[int, str],
                    calibration: dict | None) -> tuple[list[str], list[dict]]:
    """(columns, rows): path, each score, `ood_<score>` (1 flagged OOD, 0 kept as ID) per calibrated score, each
    extra (e.g. `prediction`, the classifier's label), and `error` (why an image could not be scored)."""
    scores, extras = result["scores"], result.get("extras", {})
    flagged = decisions(scores, calibration) if calibration else {}
    columns = ["path", *scores, *(f"ood_{name}" for name in flagged), *extras, "error"]
    row_of = {int(i): row for row, i in enumerate(result["index"])}
    rows = []
    for position, name in enumerate(names):
        row = {"path": name, "error": errors.get(position, "")}
        if position in row_of and not row["error"]:
            k = row_of[position]
            row.update({score: repr(float(values[k])) for score, values in scores.items()})
            row.update({f"ood_{score}": int(values[k]) for score, values in flagged.items()})
            row.update({extra: _plain(values[k]) for extra, values in extras.items()})
        elif not row["error"]:
            row["error"] = "not scored"
        rows.append(row)
    return columns, rows


def _plain(value) -> object:
    return value.item() if isinstance(value, np.generic) else value


def write_predictions(path: Path, columns: list[str], rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def write_contact_sheet(path: Path, names: Sequence[str], result: dict, score: str, calibration: dict | None,
                        count: int = 8) -> None:
    """Two rows of `count` images: the highest `score` (most OOD) and the lowest (most ID), each captioned with its
    score (and "OOD" when above the calibrated threshold). Where the detector made pictures of them
    (`result["pictures"]`: DiffGuard's re-synthesis, the guidance mask), each picture row follows under its
    images, so a flagged image's synthesis is seen beside it."""
    values = np.asarray(result["scores"][score])
    order = np.argsort(-values, kind="stable")
    rows = {"most OOD": order[:count], "most ID": order[::-1][:count]}
    threshold = calibration["scores"][score]["threshold"] if calibration and score in calibration["scores"] else None
    pictures = result.get("pictures") or {}
    picture_rows = list(dict.fromkeys(name for shown in pictures.values() for name in shown))
    width = max(1, min(count, len(values)))
    section = CAPTION + TILE + CAPTION + len(picture_rows) * (LABEL + TILE)
    sheet = Image.new("RGB", (width * TILE, 2 * section), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for label, picks in rows.items():
        limit = f" (threshold {threshold:.4g})" if threshold is not None else ""
        draw.text((4, y + 8), f"{label} by {score}{limit}", fill="black")
        y += CAPTION
        for column, k in enumerate(picks):
            name = names[int(result["index"][k])]
            try:
                image = load_rgb(name)
            except ImageDecodeError:
                image = Image.new("RGB", (TILE, TILE), "grey")
            _paste(sheet, image, column * TILE, y)
            flag = " OOD" if threshold is not None and values[k] > threshold else ""
            draw.text((column * TILE + 4, y + TILE + 2), f"{values[k]:.4g}{flag}", fill="red" if flag else "black")
            draw.text((column * TILE + 4, y + TILE + 14), Path(name).name[:18], fill="black")
        y += TILE + CAPTION
        for row in picture_rows:
            draw.text((4, y + 1), f"{row} of each image above", fill="black")
            y += LABEL
            for column, k in enumerate(picks):
                picture = pictures.get(int(result["index"][k]), {}).get(row)
                if picture is not None:
                    _paste(sheet, Image.fromarray(picture), column * TILE, y)
            y += TILE
    atomic_write(path, lambda f: sheet.save(f, format="png"))


def _paste(sheet: Image.Image, image: Image.Image, x: int, y: int) -> None:
    """`image` scaled to the tile (small images grow sharp, large ones shrink smooth), centred in it."""
    scale = TILE / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BICUBIC)
    sheet.paste(image, (x + (TILE - image.width) // 2, y + (TILE - image.height) // 2))
