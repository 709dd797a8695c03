r"""Score new images with a trained (or zero-training) detector: one row per image, decisions at its calibrated
thresholds, and a contact sheet of the most-OOD and most-ID images.

    python predict.py --run runs/lfdn_cifar10_jpeg/lightning_logs/version_0 --images photos/
    python predict.py --run RUN --images list.txt --out_dir predictions/list      # one path a line
    python predict.py --run RUN --images 'photos/**/*.jpg' --trainer.devices 2 --trainer.strategy ddp
    python predict.py --config configs/lfdn/cifar10_jpeg.yaml --ckpt_path last.ckpt --images photos/ \
        --calibration runs/.../calibration.json
    python predict.py --help-all                         # every option, typed

--run reads the run folder's config.yaml (the preprocessing and detector the weights were trained with),
checkpoints/last.ckpt, calibration.json and, for detectors that fit on ID train images at test time (knn / vim
baselines, pytorch-ood detectors that fit, CascadeFusion), fitted.pt, which evaluate.py writes; any
--SECTION.OPTION given after it overrides the config.
Writes --out_dir/predictions.csv (path, each score, ood_<score> = 1 above the calibrated threshold, the
classifier's predicted label where the detector has one, error: why a file could not be read; such files never
stop the run) and --out_dir/contact_sheet.png (for DiffGuard with its re-synthesis under each image). A score
depends on the image and the detector only (its noise is keyed by the image's pixels), so the same image scores
the same in any folder, order, batch or process count.
Without calibration the scores are written without decisions; docs/predict.md says how to calibrate.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ood_lightning.cli_messages import HELP_FLAGS, run_entry_point


def main(args: list[str] | None = None) -> dict:
    from ood_lightning.cli import PredictCLI, make_cli, run_arguments
    from ood_lightning.detectors.base import OODDetector
    from ood_lightning.prediction.calibration import HOW_TO_CALIBRATE, find_calibration, read_calibration
    from ood_lightning.prediction.fitted import fit_key, load_fitted
    from ood_lightning.prediction.images import ImageInputs, image_paths
    from ood_lightning.prediction.outputs import prediction_rows, write_contact_sheet, write_predictions
    from ood_lightning.prediction.runner import score_images

    argv = sys.argv[1:] if args is None else list(args)
    if not any(arg in HELP_FLAGS or arg.startswith("--help") for arg in argv):
        argv = run_arguments(argv)
    cli = make_cli(argv, description=__doc__, model_class=OODDetector, cli_class=PredictCLI)
    config = cli.config
    paths = image_paths(config.images)
    images = ImageInputs(paths, cli.datamodule.transform)
    ckpt_path = cli.checkpoint_path()
    checkpoint_run = Path(ckpt_path).resolve().parent.parent if ckpt_path and Path(ckpt_path).is_file() else None
    calibration_folder = Path(config.calibration) if config.calibration else None
    if calibration_folder is not None and calibration_folder.suffix == ".json":
        calibration_folder = calibration_folder.parent
    configs = [str(c) for c in config.get("config") or []]
    load_fitted(cli.model, fit_key(config.as_dict()), [config.run, checkpoint_run, calibration_folder],
                config=configs[-1] if configs else None)
    score = config.sheet_score or cli.model.score_names[0]
    if score not in cli.model.score_names:
        raise ValueError(f"--sheet_score {score!r} is not a score of {type(cli.model).__name__}; its scores are "
                         f"{list(cli.model.score_names)}")
    with cli.checkpoint_errors_explained(ckpt_path):
        result = score_images(cli.trainer, cli.model, cli.datamodule, images, ckpt_path=ckpt_path,
                              sheet=(score, config.sheet_images))
    if not cli.trainer.is_global_zero:
        return result
    calibration = (read_calibration(config.calibration) if config.calibration
                   else find_calibration(config.run, checkpoint_run))
    if calibration is None:
        print(f"No calibration for this detector: predictions.csv holds scores without decisions. {HOW_TO_CALIBRATE}")
    errors = {int(i): images.error(int(i)) or "unreadable" for i in result["skipped"]}
    columns, rows = prediction_rows(images.names, result, errors, calibration)
    out_dir = Path(config.out_dir)
    write_predictions(out_dir / "predictions.csv", columns, rows)
    if len(result["index"]):
        write_contact_sheet(out_dir / "contact_sheet.png", images.names, result, score, calibration,
                            config.sheet_images)
    flagged = {name: sum(int(row.get(f"ood_{name}", 0) or 0) for row in rows) for name in result["scores"]
               if calibration and name in calibration["scores"]}
    print(f"{len(result['index'])} of {len(paths)} images scored ({len(errors)} unreadable) -> "
          f"{out_dir / 'predictions.csv'}, {out_dir / 'contact_sheet.png'}"
          + ("".join(f"\n  {name}: {count} flagged OOD at threshold {calibration['scores'][name]['threshold']:.6g}"
                     for name, count in flagged.items())))
    return result


if __name__ == "__main__":
    run_entry_point(main)
