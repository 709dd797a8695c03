r"""Score a trained (or zero-training) detector on a benchmark and write the results table.

    python evaluate.py --config runs/digits_demo/lightning_logs/version_0/config.yaml \
        --ckpt_path runs/digits_demo/lightning_logs/version_0/checkpoints/last.ckpt
    python evaluate.py --config configs/lfdn/cifar10.yaml \
        --model.init_args.official_checkpoints '[checkpoint-0.pth, checkpoint-last.pth]'
    python evaluate.py --help-all                        # every option, typed

Results (results.json/csv/md, scores/<set>.npz, plots/) go to the run folder, or to --results_dir. With
--calibrate true, thresholds are also set on held-out in-distribution train images (calibration.json there; see
docs/predict.md); results.json then reports the ID TPR they keep and the share of each OOD set they flag.

Re-use of per-sample scores, no model needed (metrics, tables and plots are rebuilt from scores/*.npz):

    python evaluate.py --from_scores runs/digits_demo/lightning_logs/version_0
    python evaluate.py --from_scores DIR --scores '[mse, mfsim]' --out_dir DIR/mse_only
    python evaluate.py --from_scores DIR --groups '{near: [tin], far: [mnist]}'
    python evaluate.py --from_scores DIR --help
"""
from __future__ import annotations

import sys
from typing import Optional

from ood_lightning.cli_messages import run_entry_point


def rescore_main(args: list[str]) -> dict:
    """`evaluate.py --from_scores DIR ...`: report.rescore on an earlier evaluation's folder."""
    from jsonargparse import ArgumentParser

    from ood_lightning.report import rescore

    parser = ArgumentParser(prog="evaluate.py", description="Rebuild results.json/csv/md and plots from "
                            "the scores/<set>.npz of an earlier evaluation, without loading any model.")
    parser.add_argument("--from_scores", type=str, required=True,
                        help="folder of an earlier evaluation (holds scores/<set>.npz, usually results.json)")
    parser.add_argument("--out_dir", type=Optional[str], default=None,
                        help="write here instead of overwriting the tables and plots in --from_scores")
    parser.add_argument("--scores", type=Optional[list[str]], default=None,
                        help="only these score types (default: every score type in the npz files)")
    parser.add_argument("--groups", type=Optional[dict[str, list[str]]], default=None,
                        help="near/far groups {group: [set, ...]} (default: those of the earlier results.json)")
    parser.add_argument("--plots", type=bool, default=True, help="write plots/*.png")
    cfg = parser.parse_args(args)
    return rescore(cfg.from_scores, out_dir=cfg.out_dir, scores=cfg.scores, groups=cfg.groups, plots=cfg.plots)


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    if any(a == "--from_scores" or a.startswith("--from_scores=") for a in argv):
        rescore_main(argv)
        return
    from ood_lightning.cli import make_cli
    from ood_lightning.detectors.base import OODDetector

    cli = make_cli(args, description=__doc__, model_class=OODDetector)  # None: LightningCLI reads sys.argv itself
    ckpt_path = cli.checkpoint_path()
    with cli.checkpoint_errors_explained(ckpt_path):
        cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path, verbose=False)
    if cli.config.get("calibrate"):  # after the test, which fits what some detectors fit (knn, vim, fusion)
        calibration_file = cli.calibrate(ckpt_path, required=True)
        cli.evaluation.add_calibration(cli.trainer, calibration_file)


if __name__ == "__main__":
    run_entry_point(main)
