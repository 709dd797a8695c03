"""A compact export of a run for scoring new images, in the spirit of save_pretrained / from_pretrained:
`model.safetensors` (only the weights scoring reads: for LFDN the EMA networks, not the trained copy or the
optimizer; a pretrained backbone stays a reference to its weights file), `detector.json` (the model config,
the preprocessing, the calibration) and, for a detector that fits at test time, the run's `fitted.pt`.
`load_detector` reads it without the run's folder or training config.

    python -m ood_lightning.prediction.export RUN_FOLDER OUT_FOLDER [--checkpoint FILE]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import yaml
from safetensors.torch import load_file

from ood_lightning.detectors.base import OODDetector
from ood_lightning.io import atomic_write, atomic_write_text
from ood_lightning.prediction.building import BUILD_ONLY, load_run
from ood_lightning.prediction.calibration import find_calibration
from ood_lightning.prediction.fitted import fit_key, load_fitted, save_fitted

EXPORT_JSON = "detector.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = 1


def export_detector(run: str | os.PathLike, out_dir: str | os.PathLike,
                    checkpoint: str | os.PathLike | None = None) -> Path:
    """Write `out_dir`/detector.json and model.safetensors for the run folder `run`; returns the json's path."""
    run, out_dir = Path(run), Path(out_dir)
    model, _, batch_size = load_run(run, checkpoint)
    config = yaml.safe_load((run / "config.yaml").read_text())
    data = config.get("data") or {}
    state = {key: value.detach().cpu().contiguous() for key, value in model.export_state(model.state_dict()).items()}
    atomic_write(out_dir / WEIGHTS_FILE, lambda f: f.write(_safetensors_bytes(state)))
    save_fitted(out_dir, model, fit_key({"model": config["model"]}))  # knn / vim / fusion: what the run fitted
    description = {
        "format": FORMAT,
        "model": config["model"],
        "preprocessing": {"image_size": data.get("image_size"), "center_crop": data.get("center_crop")},
        "batch_size": batch_size,
        "calibration": find_calibration(run),
        "weights": WEIGHTS_FILE,
        "exported_from": {"run": str(run), "checkpoint": str(checkpoint or run / "checkpoints" / "last.ckpt")},
    }
    path = out_dir / EXPORT_JSON
    atomic_write_text(path, json.dumps(description, indent=2) + "\n")
    return path


def _safetensors_bytes(state: dict) -> bytes:
    from safetensors.torch import save

    return save(state)


def load_export(path: str | os.PathLike) -> tuple[OODDetector, object, dict | None, int]:
    """(model with its weights, preprocessing transform, calibration, batch size) of an export folder or its json."""
    from ood_lightning.cli import make_cli

    path = Path(path)
    file = path if path.suffix == ".json" else path / EXPORT_JSON
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no exported detector here (python -m ood_lightning.prediction.export RUN "
                                "OUT writes one)")
    description = json.loads(file.read_text())
    if description.get("format") != FORMAT:
        raise ValueError(f"{file}: export format {description.get('format')!r}, this version reads {FORMAT}")
    preprocessing = description["preprocessing"]
    args = ["--model", json.dumps(description["model"]), *BUILD_ONLY,
            "--data.image_size", json.dumps(preprocessing["image_size"]),
            "--data.center_crop", json.dumps(preprocessing["center_crop"])]
    cli = make_cli(args, description="load_detector", model_class=OODDetector)
    weights = file.parent / description["weights"]
    cli.model.load_state_dict(cli.model.import_state(load_file(str(weights))), strict=True)
    load_fitted(cli.model, fit_key({"model": description["model"]}), [file.parent])
    return cli.model, cli.datamodule.transform, description.get("calibration"), int(description["batch_size"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ood_lightning.prediction.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run folder (config.yaml, checkpoints/last.ckpt, calibration.json)")
    parser.add_argument("out_dir", help="where detector.json and model.safetensors go")
    parser.add_argument("--checkpoint", default=None, help="another checkpoint than the run's last.ckpt")
    args = parser.parse_args(argv)
    print(f"exported: {export_detector(args.run, args.out_dir, args.checkpoint)}")


if __name__ == "__main__":
    main()
