"""On-demand mutation testing of the core modules: does a one-line wrong change make a test fail?

Each mutant below is one small edit (a line, or two lines swapped) to metrics.py, report.py, a detector's score or
the LFDN / DiffGuard code that computes a user-visible number. For each mutant the script copies the source tree to
a temporary folder, applies the edit there, runs only the test files relevant to it (pytest -x) and reports
"killed" (a test failed) or "survived" (every test passed). The checkout itself is never modified.

    .venv/bin/python tools/mutation_test.py                    # the working tree, every mutant
    .venv/bin/python tools/mutation_test.py --rev HEAD         # a commit (git archive), e.g. to compare before/after
    .venv/bin/python tools/mutation_test.py --only M01 M13     # some mutants
    .venv/bin/python tools/mutation_test.py --list             # what would run

Not part of CI: a full run takes tens of minutes on 2 CPU cores. Test files that do not exist in the tree being
tested are left out (so an older revision runs the tests it had). A mutant whose original text is not found exactly
once is reported as "stale" (the code moved on: update the mutant). A test run that exceeds --timeout counts as
killed (the change made the tests hang) and is reported as "timeout". Before the mutants, each distinct test
selection runs once on the unmutated tree (the control): a mutant whose tests already fail there is reported as
"invalid", not killed. For a killed mutant the first failing test is shown.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

METRICS_TESTS = ("tests/test_metrics.py", "tests/test_report.py")
LFDN_TESTS = ("tests/test_lfdn_scores.py", "tests/test_lfdn_diffusion.py", "tests/test_lfdn_score_types.py",
              "tests/test_lfdn_module.py::test_scores_do_not_depend_on_batch_size")
LDM_TESTS = ("tests/test_diffguard_ldm.py",)
GDM_UNIT_TESTS = ("tests/test_diffguard_sampling.py", "tests/test_similarity.py")
CONFIG_TESTS = ("tests/test_configs.py",)


@dataclasses.dataclass(frozen=True)
class Mutant:
    id: str
    path: str  # relative to the repository root
    edits: tuple[tuple[str, str], ...]  # (original text, replacement), each original found exactly once
    tests: tuple[str, ...]
    what: str
    earlier: tuple[tuple[tuple[str, str], ...], ...] = ()  # the same mutation as written for older code (--rev)
    moved_from: tuple[str, ...] = ()  # where the file was in older code (--rev)


M = "ood_lightning/metrics.py"
R = "ood_lightning/report.py"
LM = "ood_lightning/detectors/lfdn/module.py"
LD = "ood_lightning/detectors/lfdn/diffusion.py"
LS = "ood_lightning/detectors/lfdn/scores.py"
LDM = "ood_lightning/detectors/diffguard/ldm/detector.py"
GDM = "ood_lightning/detectors/diffguard/gdm/detector.py"
OLD_LDM = ("ood_lightning/detectors/diffguard/ldm.py",)  # before the one-folder-per-pipeline restructure
OLD_GDM = ("ood_lightning/detectors/diffguard/gdm.py",)

MUTANTS: tuple[Mutant, ...] = (
    # ---- metrics.py: which function fills which column, and the formulas
    Mutant("M01", M, (('"aupr_in": aupr_in,', '"aupr_in": aupr_out,'), ('"aupr_out": aupr_out,', '"aupr_out": aupr_in,')),
           METRICS_TESTS, "aupr_in and aupr_out swapped in the metric table"),
    Mutant("M02", M, (('"fpr95": fpr95,', '"fpr95": fpr95_openood,'),
                      ('"fpr95_openood": fpr95_openood,', '"fpr95_openood": fpr95,')),
           METRICS_TESTS, "fpr95 and fpr95_openood swapped in the metric table"),
    Mutant("M03", M, (("precision_recall_curve(1 - y, -s)", "precision_recall_curve(1 - y, s)"),),
           METRICS_TESTS, "AUPR-In ranks by +score instead of -score"),
    Mutant("M04", M, (("np.mean(o < np.percentile(i, 95))", "np.mean(o <= np.percentile(i, 95))"),),
           METRICS_TESTS, "fpr95 accepts OOD at the threshold (<= instead of <)"),
    Mutant("M05", M, (("np.argmax(tpr >= 0.95)", "np.argmax(tpr > 0.95)"),),
           METRICS_TESTS, "fpr95_openood threshold needs more than 95% of OOD"),
    Mutant("M06", M, (('row["n_ood"] = int(sum(', 'row["n_ood"] = int(max('),),
           METRICS_TESTS, "group rows count the largest OOD set instead of the sum"),
    Mutant("M07", M, (("return float(auc(recall, precision))\n\n\ndef fpr95(",
                       "return float(np.mean(precision))\n\n\ndef fpr95("),),
           METRICS_TESTS, "AUPR-Out as a plain mean of precisions instead of the trapezoid area"),
    # ---- report.py: the chain from metrics to results.json / CSV / Markdown
    Mutant("M08", R, (('id_scores, ood_scores = id_set["scores"][score], s["scores"][score]',
                       'ood_scores, id_scores = id_set["scores"][score], s["scores"][score]'),),
           METRICS_TESTS, "ID and OOD scores swapped when the table is built"),
    Mutant("M09", R, (('"AUROC %", "AUPR-In %", "AUPR-Out %",', '"AUROC %", "AUPR-Out %", "AUPR-In %",'),),
           METRICS_TESTS, "Markdown header names AUPR-In / AUPR-Out in the wrong columns",
           earlier=((('"AUROC", "AUPR-In", "AUPR-Out",', '"AUROC", "AUPR-Out", "AUPR-In",'),),)),
    Mutant("M10", R, (('"FPR95 % (ID 95%)", "FPR95 % (OpenOOD)"', '"FPR95 % (OpenOOD)", "FPR95 % (ID 95%)"'),),
           METRICS_TESTS, "Markdown header names the two FPR95 conventions in the wrong columns",
           earlier=((('"FPR95 (ID 95%)", "FPR95 (OpenOOD)"', '"FPR95 (OpenOOD)", "FPR95 (ID 95%)"'),),)),
    Mutant("M11", R, (("else 100 * m[metric]", "else m[metric]"),),
           METRICS_TESTS, "CSV and Markdown metrics as fractions while the headers say percent",
           earlier=((('f"{100 * r[m]:.2f}"', 'f"{r[m]:.2f}"'),),)),  # before the CSV was in percent too
    Mutant("M12", R, (('row["n_skipped"] = sum(rows[n]["n_skipped"]', 'row["n_skipped"] = max(rows[n]["n_skipped"]'),),
           METRICS_TESTS, "group rows' skipped count is the max, not the sum"),
    # ---- LFDN: which network scores, noise level, options, signs
    Mutant("M13", LM, (('for tag, net in (("", self.ema), ("_epoch0", self.ema_first)):',
                        'for tag, net in (("", self.net), ("_epoch0", self.ema_first)):'),),
           LFDN_TESTS, "LFDN scores with the raw network instead of the EMA"),
    Mutant("M14", LM, (("start_index: int = 3,", "start_index: int = 4,"),),
           CONFIG_TESTS + LFDN_TESTS, "LFDN noise level start_index 3 -> 4"),
    Mutant("M15", LM, (('out["lr_mfsim"] = out["mfsim_epoch0"] - out["mfsim"]',
                        'out["lr_mfsim"] = out["mfsim"] - out["mfsim_epoch0"]'),),
           LFDN_TESTS, "lr_mfsim sign flipped"),
    Mutant("M16", LM, (("self.group_sizes, self.hparams.mfsim_skip_first_group)", "self.group_sizes, True)"),),
           LFDN_TESTS, "mfsim_skip_first_group ignored"),
    Mutant("M17", LM, (('for tag, net in (("", self.ema), ("_epoch0", self.ema_first)):',
                        'for tag, net in (("", self.ema), ("_epoch0", self.ema)):'),),
           LFDN_TESTS, "*_epoch0 scores with the final EMA instead of the first-epoch EMA"),
    Mutant("M18", LM, (('out["lr_mse"] = out["mse_epoch0"] - out["mse"]', 'out["lr_mse"] = out["mse"] - out["mse_epoch0"]'),),
           LFDN_TESTS, "lr_mse sign flipped"),
    Mutant("M19", LM, (("eta: float = 1.0,", "eta: float = 0.0,"),),
           CONFIG_TESTS + LFDN_TESTS, "LFDN DDIM eta 1 -> 0 (deterministic reconstruction)"),
    Mutant("M20", LM, (("if self.current_epoch == 0:", "if True:"),),
           LFDN_TESTS, "the first-epoch EMA is overwritten every epoch (LR compares the last two epochs)"),
    Mutant("M21", LD, (("pairs = [(self.ab(s - 1), self.ab(max(s - 2, 0))) for s in steps]",
                        "pairs = [(self.ab(s), self.ab(s - 1)) for s in steps]"),),
           LFDN_TESTS, "the reference sampler without its off-by-one alpha tables",
           earlier=((("return self.ab(t - 1), self.ab(max(t - 2, 0))", "return self.ab(t), self.ab(t - 1)"),),)),
    Mutant("M22", LS, (("return (z - z_hat).pow(2).sum(dim=1)", "return (z - z_hat).pow(2).mean(dim=1)"),),
           LFDN_TESTS, "MSE averaged instead of summed over features"),
    # ---- DiffGuard: classifier-free path (LDM)
    Mutant("M23", LDM, (("torch.cat([target, torch.full_like(target, null)])", "torch.cat([target, target])"),),
           LDM_TESTS, "the LDM unguided twin is guided toward the target like the synthesis", moved_from=OLD_LDM),
    Mutant("M24", "ood_lightning/ddim.py", (("torch.where(mask, guided, eps_null)", "torch.where(mask, eps_null, guided)"),),
           LDM_TESTS, "guidance applied outside the Grad-CAM mask instead of inside",
           earlier=((("torch.where(mask, guided, eps_uncond)", "torch.where(mask, eps_uncond, guided)"),),), moved_from=OLD_LDM),
    Mutant("M25", LDM, (("guidance_scale: float = 10.0,", "guidance_scale: float = 3.0,"),),
           CONFIG_TESTS + LDM_TESTS, "LDM default guidance scale 10 -> 3", moved_from=OLD_LDM),
    Mutant("M26", LDM, (("cam_cut: float = 0.3,", "cam_cut: float = 0.2,"),),
           CONFIG_TESTS + LDM_TESTS, "LDM default Grad-CAM cut 0.3 -> 0.2 (the paper's best, not the released)", moved_from=OLD_LDM),
    # ---- DiffGuard: classifier-guided path (GDM)
    Mutant("M27", GDM, (("stop_psnr: float | None = 6.39,", "stop_psnr: float | None = 48.5,"),),
           CONFIG_TESTS + GDM_UNIT_TESTS, "GDM default PSNR stop in the reference's 255-peak units (48.5)", moved_from=OLD_GDM),
    Mutant("M28", GDM, (("stop_dists_similarity: float | None = 0.38,", "stop_dists_similarity: float | None = 0.37,"),),
           CONFIG_TESTS + GDM_UNIT_TESTS, "GDM default DISTS stop 0.38 -> 0.37 (the conf file's, not exp6.1's)", moved_from=OLD_GDM),
    Mutant("M29", "ood_lightning/detectors/diffguard/gdm/guidance.py",
           (("return eps - math.sqrt(1.0 - alpha_bar) * g", "return eps + math.sqrt(1.0 - alpha_bar) * g"),),
           GDM_UNIT_TESTS, "classifier guidance with the paper's printed '+' sign (pushes away from the label)",
           moved_from=("ood_lightning/detectors/diffguard/guidance.py",)),
    Mutant("M30", "ood_lightning/detectors/diffguard/similarity.py",
           (("mse = ((x.float() - y.float()) / 2).square()", "mse = (x.float() - y.float()).square()"),),
           GDM_UNIT_TESTS, "PSNR of the early-stop rule on the [-1, 1] scale instead of [0, 1]"),
)


def copy_tree(dest: Path, rev: str | None) -> None:
    """The files of `rev` (git archive) or of the working tree (tracked and untracked, not ignored) into dest."""
    if rev is not None:
        archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=REPO, check=True, capture_output=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(dest, filter="data")
        return
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def present(tree: Path, tests: tuple[str, ...]) -> list[str]:
    return [t for t in tests if (tree / t.split("::")[0]).is_file()]


def run_tests(tests: list[str], tree: Path, python: str, timeout: float) -> tuple[str, str]:
    """pytest -x on `tests` in `tree`: ("passed" | "failed" | "timeout" | "error ...", first failure or tail)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    try:
        proc = subprocess.run([python, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider", "-W", "ignore",
                               *tests], cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"more than {timeout:.0f} s"
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    failed = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    if proc.returncode == 0:
        return "passed", ""
    if proc.returncode == 1:
        return "failed", (failed or lines[-1:])[0]
    return f"error (pytest exit {proc.returncode})", "\n".join(lines[-3:])  # interrupted, usage error, ...


def run_mutant(mutant: Mutant, tree: Path, python: str, timeout: float, control: dict) -> tuple[str, float, str]:
    """Apply, test, restore; returns (status, seconds, the first failure or why it did not run)."""
    path = next((tree / p for p in (mutant.path, *mutant.moved_from) if (tree / p).is_file()), tree / mutant.path)
    original = path.read_text()
    for edits in (mutant.edits, *mutant.earlier):  # the first form whose original text is there exactly once
        if all(original.count(old) == 1 for old, _ in edits):
            break
    else:
        missing = [old for old, _ in mutant.edits if original.count(old) != 1]
        return "stale", 0.0, f"{missing[0]!r} not found exactly once in {mutant.path}"
    mutated = original
    for old, new in edits:
        mutated = mutated.replace(old, new)
    tests = present(tree, mutant.tests)
    if not tests:
        return "no tests", 0.0, ""
    key = tuple(tests)
    if key not in control:  # the control: the same tests on the unmutated tree
        control[key] = run_tests(tests, tree, python, timeout)
        print(f"control {control[key][0]:<8} {' '.join(tests)}" + (f"\n      {control[key][1]}"
                                                                     if control[key][1] else ""), flush=True)
    if control[key][0] != "passed":
        return "invalid", 0.0, f"the unmutated tree does not pass these tests: {control[key][1]}"
    path.write_text(mutated)
    start = time.monotonic()
    try:
        outcome, detail = run_tests(tests, tree, python, timeout)
    finally:
        path.write_text(original)
    status = {"passed": "survived", "failed": "killed"}.get(outcome, outcome)
    return status, time.monotonic() - start, detail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", help="test this git revision (git archive) instead of the working tree")
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests, run nothing")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutant's test run")
    parser.add_argument("--python", default=sys.executable, help="interpreter with the project installed")
    args = parser.parse_args(argv)

    mutants = [m for m in MUTANTS if not args.only or m.id in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.id}  {m.path}: {m.what}\n      tests: {' '.join(m.tests)}")
        return 0
    with tempfile.TemporaryDirectory(prefix="mutation_") as tmp:
        tree = Path(tmp) / "main"
        tree.mkdir()
        copy_tree(tree, args.rev)
        shared = REPO.parent / "shared"  # the tests find ../shared beside the checkout
        if shared.is_dir():
            os.symlink(shared, Path(tmp) / "shared")
        print(f"mutation testing {'revision ' + args.rev if args.rev else 'the working tree'} of {REPO} "
              f"in {tree}, {len(mutants)} mutants", flush=True)
        results, control = [], {}
        for m in mutants:
            status, seconds, detail = run_mutant(m, tree, args.python, args.timeout, control)
            results.append((m, status))
            print(f"{m.id} {status:<9} {seconds:6.0f} s  {m.path}: {m.what}", flush=True)
            if detail:
                print("      " + detail.replace("\n", "\n      ")[:300], flush=True)
    counted = [(m, s) for m, s in results if s in ("killed", "survived", "timeout")]
    killed = sum(s in ("killed", "timeout") for _, s in counted)
    survivors = [m.id for m, s in counted if s == "survived"]
    print(f"\nmutation score: {killed}/{len(counted)} killed"
          + (f" ({100 * killed / len(counted):.0f}%)" if counted else "")
          + (f"; survived: {' '.join(survivors)}" if survivors else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
