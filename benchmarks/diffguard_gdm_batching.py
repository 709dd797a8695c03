"""DiffGuard GDM: what batching with per-sample start indices buys over the reference's batch size 1, on CPU.

    python benchmarks/diffguard_gdm_batching.py                 # extracts ../shared/data into data/ if needed
    python benchmarks/diffguard_gdm_batching.py --images 8 --batch-size 8 --width 64
    python benchmarks/diffguard_gdm_batching.py --unet runs/.../unet --null-class 10   # a trained model
    python benchmarks/diffguard_gdm_batching.py --proof-runs runs/bench_mnist --images 16 --batch-size 16 \
        --tag mnist_trained       # the MNIST proof's trained models (python benchmarks/diffguard_mnist.py makes them)
    python benchmarks/diffguard_gdm_batching.py --proof-runs runs/bench_mnist --random-unet mnist --images 4 \
        --batch-size 4 --threads 1 --tag mnist_random    # the proof's classifier and data, a random MNIST UNet

The released GDM config (ddim100, at most 90 inversion steps with the PSNR early-stop rule, re-synthesis from the
stop index + 2 with Clean Grad guidance and the unguided twin) scores the same CIFAR-10 / Tiny-ImageNet JPEGs twice,
once one image at a time (what the reference's early stop forces) and once in batches, and checks that the scores
agree. The classifier is the real DenseNet-BC-100 of ../shared/weights; the diffusion model is a randomly initialised
DDPM-CIFAR-10-shaped diffusers UNet (no pre-trained one can be loaded offline) unless --unet gives a trained one;
with a random model the scores mean nothing: this measures cost, not detection. `--proof-runs` takes both models from
the MNIST proof's run folder (benchmarks/diffguard_mnist.py: <dir>/unet, <dir>/classifier.pt) and scores its
mnist_0_4 digits at the proof's 16 px; `--random-unet mnist` a random model shaped as
configs/diffusion/mnist_0_4.yaml instead of a trained one.
Writes benchmarks/results/diffguard_gdm_batching[_tag].{json,md}: wall time per setting and where it went (seconds in
UNet calls, classifier forward passes, the Clean Grad guidance with its backward pass, of which the cutouts, and the
rest: the sampler's masking and DDIM arithmetic, data and evaluation), UNet and classifier image passes per image
(from the detector's own per-sample accounting) and the largest score difference between the two runs.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from diffusers import UNet2DModel
from lfdn_cifar10_jpeg import ensure_extracted

from ood_lightning.data.datamodule import OODDataModule
from ood_lightning.detectors.diffguard.gdm import DiffGuardGDM
from ood_lightning.evaluation import Evaluation
from ood_lightning.io import atomic_write_text
from ood_lightning.training.diffusion import ClassConditionalDiffusion

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO.parent / "shared" / "weights" / "cifar10_densenet_bc100.pt"


def random_ddpm_unet(folder: Path, width: int) -> None:
    """google/ddpm-cifar10-32's layout (widths w, 2w, 2w, 2w; attention at 16 px), random weights, saved."""
    torch.manual_seed(0)
    UNet2DModel(sample_size=32, block_out_channels=(width, 2 * width, 2 * width, 2 * width), layers_per_block=2,
                down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")).save_pretrained(folder)


def random_mnist_unet(folder: Path) -> None:
    """A random (seed 0) model of configs/diffusion/mnist_0_4.yaml's architecture, exported as that config would."""
    config = yaml.safe_load((REPO / "configs" / "diffusion" / "mnist_0_4.yaml").read_text())["model"]["init_args"]
    torch.manual_seed(0)
    ClassConditionalDiffusion(**{k: v for k, v in config.items() if k != "export_dir"}).export(folder)


class Timer:
    """Seconds spent inside wrapped callables, per name; time inside a call nested in another timed call also goes
    to "<name>_in_<outer>" (the classifier's forward passes inside the guidance)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.active: list[str] = []

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            outer = self.active[-1] if self.active else None
            self.active.append(name)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.active.pop()
                spent = time.perf_counter() - start
                self.seconds[name] += spent
                if outer:
                    self.seconds[f"{name}_in_{outer}"] += spent
        return timed


def attach_timers(model: DiffGuardGDM, timer: Timer) -> None:
    """Time the UNet, the classifier's forward passes, the guidance and its cutouts (instance attributes only)."""
    model.unet.forward = timer.wrap("unet", model.unet.forward)
    model.classifier.forward = timer.wrap("classifier_forward", model.classifier.forward)
    guidance = model.guidance
    guidance.cutouts = _Timed(guidance.cutouts, timer.wrap("cutouts", guidance.cutouts.__call__))
    model.guidance = _Timed(guidance, timer.wrap("guidance", guidance.__call__))


class _Timed:
    """An object whose calls go through `call` (a timed version of its own __call__)."""

    def __init__(self, inner, call):
        self.inner, self.call = inner, call

    def __call__(self, *args, **kwargs):
        return self.call(*args, **kwargs)


def unet_call_times(unet_dir: Path, sizes: tuple[int, ...] = (1, 8, 16), repeats: int = 10) -> list[dict]:
    """Milliseconds per UNet call at each batch size: float32, float32 in channels_last memory format, and bf16
    autocast on the CPU (the options that could make the sampler's calls cheaper)."""
    unet = UNet2DModel.from_pretrained(unet_dir).eval()
    side, channels = unet.config.sample_size, unet.config.in_channels
    labels = unet.config.num_class_embeds
    rows = []
    for variant in ("float32", "channels_last", "bf16 autocast"):
        unet.to(memory_format=torch.channels_last if variant == "channels_last" else torch.contiguous_format)
        for size in sizes:
            x = torch.randn(size, channels, side, side, generator=torch.Generator().manual_seed(0))
            if variant == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            t = torch.full((size,), 500)
            c = torch.full((size,), labels - 1) if labels else None
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "bf16 autocast"):
                unet(x, t, class_labels=c)  # warm-up
                start = time.perf_counter()
                for _ in range(repeats):
                    unet(x, t, class_labels=c)
            rows.append({"variant": variant, "batch": size, "ms": 1000 * (time.perf_counter() - start) / repeats})
    return rows


def run(args: argparse.Namespace, unet_dir: Path, batch_size: int, out: Path) -> tuple[float, dict, dict]:
    size = 16 if args.proof_runs else 32
    model = DiffGuardGDM(diffusion_model=str(unet_dir), classifier=args.classifier,
                         classifier_weights=args.classifier_weights, num_classes=args.num_classes,
                         stop_dists_similarity=None, cutouts=0, cutout_size=size, similarities=["logits_l1", "l2"],
                         null_class=args.null_class, grid_images=0)
    timer = Timer()
    attach_timers(model, timer)
    if args.id_test:  # your own folders
        dm = OODDataModule(benchmark="folders", id_test=args.id_test, ood={"ood": args.ood}, image_size=size,
                           batch_size=batch_size, eval_subset=args.images, train=False)
    elif args.proof_runs:  # the MNIST proof's data: digits 0-4 in distribution, 5-9 first OOD set
        dm = OODDataModule(benchmark="mnist_0_4", root=args.root, image_size=size, batch_size=batch_size,
                           eval_subset=args.images, train=False)
    else:
        dm = OODDataModule(benchmark="cifar10_jpeg", root=args.root, image_size=size, batch_size=batch_size,
                           eval_subset=args.images, train=False)
    dm.setup("test")
    dm.test_sets = dict(list(dm.test_sets.items())[:2])  # "id" and the first OOD set
    dm.groups = {}  # the preset's near/far groups name sets left out here
    trainer = L.Trainer(accelerator="cpu", inference_mode=False, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(out),
                        callbacks=[Evaluation(results_dir=str(out), plots=False)])
    start = time.perf_counter()
    trainer.test(model, datamodule=dm, verbose=False)
    wall = time.perf_counter() - start
    scores = {}
    for path in sorted((out / "scores").glob("*.npz")):
        with np.load(path) as f:
            scores[path.stem] = {key: f[key] for key in f.files}
    seconds = dict(timer.seconds)
    inner = seconds.get("classifier_forward_in_guidance", 0.0)
    seconds["other"] = wall - seconds.get("unet", 0.0) - seconds.get("classifier_forward", 0.0) \
        - (seconds.get("guidance", 0.0) - inner)
    return wall, scores, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(REPO / "data"), help="where the JPEG archives are (or get) extracted")
    parser.add_argument("--images", type=int, default=8, help="images per test set (ID, OOD)")
    parser.add_argument("--batch-size", type=int, default=8, help="the batched setting's batch size")
    parser.add_argument("--width", type=int, default=64, help="random UNet's base width (google/ddpm-cifar10-32: 128)")
    parser.add_argument("--unet", default=None, help="a trained diffusers UNet2DModel folder instead of a random one "
                        "(e.g. the export of configs/diffusion/cifar10_jpeg.yaml)")
    parser.add_argument("--null-class", type=int, default=None, help="the null class of a class-conditional --unet")
    parser.add_argument("--tag", default="", help="suffix of the results files")
    parser.add_argument("--classifier", default="cifar_densenet_bc100", help="classifier-under-protection")
    parser.add_argument("--classifier-weights", default=str(WEIGHTS), help="its weight file")
    parser.add_argument("--num-classes", type=int, default=None, help="its classes (default: from the file)")
    parser.add_argument("--id-test", default=None, help="an ImageFolder of ID test images instead of CIFAR-10")
    parser.add_argument("--ood", default=None, help="with --id-test: a folder of OOD images")
    parser.add_argument("--proof-runs", default=None, help="the MNIST proof's run folder (runs/bench_mnist): its "
                        "unet/ and classifier.pt on its mnist_0_4 digits at 16 px")
    parser.add_argument("--random-unet", choices=["ddpm", "mnist"], default=None, help="a random model instead of "
                        "a trained one, shaped as google/ddpm-cifar10-32 (the default without --unet / "
                        "--proof-runs) or "
                        "configs/diffusion/mnist_0_4.yaml")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.proof_runs:
        runs = Path(args.proof_runs)
        args.classifier_weights, args.classifier, args.num_classes = str(runs / "classifier.pt"), "cifar_resnet20", 5
        needed = [runs / "classifier.pt"]
        if not args.random_unet:  # the proof's trained UNet, unless a random one is asked for
            args.unet = str(runs / "unet")
            needed.append(runs / "unet" / "diffguard.json")
        missing = [str(p) for p in needed if not p.is_file()]
        if missing:
            raise SystemExit(f"{missing} missing: python benchmarks/diffguard_mnist.py --out {runs} trains them")
    if not args.id_test:
        ensure_extracted(Path(args.root))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        unet = Path(args.unet) if args.unet else tmp / "unet"
        if not args.unet:
            if args.random_unet == "mnist":
                random_mnist_unet(unet)
            else:
                random_ddpm_unet(unet, args.width)
        params = sum(p.numel() for p in UNet2DModel.from_pretrained(unet).parameters())
        results = {}
        for batch_size in (1, args.batch_size):
            wall, scores, seconds = run(args, unet, batch_size, tmp / f"b{batch_size}")
            results[batch_size] = {"wall_s": wall, "scores": scores, "seconds": seconds}
            print(f"batch size {batch_size}: {wall:.1f} s, {seconds}")
        calls = unet_call_times(unet)
    one, many = results[1], results[args.batch_size]
    n = sum(len(s["index"]) for s in one["scores"].values())
    extras = {key: np.concatenate([s[f"extra_{key}"] for s in one["scores"].values()])
              for key in ("stop_index", "unet_evals", "classifier_evals")}
    diff = max(float(np.abs(one["scores"][name][f"score_{k}"] - many["scores"][name][f"score_{k}"]).max())
               for name in one["scores"] for k in ("logits_l1", "l2"))
    same_stops = all(np.array_equal(one["scores"][name]["extra_stop_index"], many["scores"][name]["extra_stop_index"])
                     for name in one["scores"])
    report = {
        "images": n, "unet_parameters": params, "threads": torch.get_num_threads(),
        "wall_s": {str(b): round(r["wall_s"], 1) for b, r in results.items()},
        "seconds_in": {str(b): {k: round(v, 1) for k, v in r["seconds"].items()} for b, r in results.items()},
        "speedup": round(one["wall_s"] / many["wall_s"], 2),
        "stop_index": {"min": int(extras["stop_index"].min()), "median": float(np.median(extras["stop_index"])),
                       "max": int(extras["stop_index"].max())},
        "unet_evals_per_image": float(extras["unet_evals"].mean()),
        "classifier_evals_per_image": float(extras["classifier_evals"].mean()),
        "max_score_difference": diff, "same_stop_indices": same_stops,
        "unet_call_ms": [{**row, "ms": round(row["ms"], 1)} for row in calls],
    }
    images = (f"{args.id_test} + {args.ood}" if args.id_test else "MNIST digits 0-4 + 5-9" if args.proof_runs
              else "CIFAR-10 test + Tiny-ImageNet JPEGs")
    shape = "configs/diffusion/mnist_0_4.yaml" if args.random_unet == "mnist" else "google/ddpm-cifar10-32"
    model = f"the trained UNet {args.unet}" if args.unet else f"a random UNet shaped as {shape}"
    lines = [
        "# DiffGuard GDM: batch size 1 against batched, CPU",
        "",
        f"`python benchmarks/diffguard_gdm_batching.py {' '.join(sys.argv[1:])}`: {n} images ({images}), "
        f"released GDM settings (ddim100, <= 90 inversion steps, PSNR stop 6.39 dB, start = stop + 2, unguided "
        f"twin, no cutouts at {16 if args.proof_runs else 32} px), classifier {args.classifier}, {model} "
        f"({params / 1e6:.1f} M parameters), {report['threads']} threads.",
        "",
        "| batch size | wall time (s) | images/s | in UNet (s) | classifier forward (s) | guidance (s) "
        "| of which cutouts (s) | other (s) |",
        "|---|---|---|---|---|---|---|---|",
        *[f"| {b} | {r['wall_s']:.1f} | {n / r['wall_s']:.3f} | {r['seconds'].get('unet', 0):.1f} "
          f"| {r['seconds'].get('classifier_forward', 0):.1f} | {r['seconds'].get('guidance', 0):.1f} "
          f"| {r['seconds'].get('cutouts', 0):.1f} | {r['seconds']['other']:.1f} |" for b, r in results.items()],
        "",
        "Guidance includes its classifier forward passes (also counted under classifier forward) and the backward "
        "pass; other is the wall time outside UNet, classifier and guidance: the sampler's masking and DDIM "
        "arithmetic, distances, data loading and the evaluation.",
        "",
        f"Speed-up {report['speedup']}x. Stop indices min/median/max {report['stop_index']['min']}/"
        f"{report['stop_index']['median']:g}/{report['stop_index']['max']}; per image "
        f"{report['unet_evals_per_image']:.1f} UNet and {report['classifier_evals_per_image']:.1f} classifier "
        f"image passes. Largest score difference between the two runs {diff:.2e}; stop indices identical: "
        f"{same_stops}.",
        "",
        "One UNet call (ms; per image in brackets) by batch size, in float32, channels_last and bf16 autocast:",
        "",
        "| variant | " + " | ".join(f"batch {b}" for b in dict.fromkeys(r["batch"] for r in calls)) + " |",
        "|---|" + "---|" * len(dict.fromkeys(r["batch"] for r in calls)),
        *[f"| {variant} | " + " | ".join(f"{r['ms']:.1f} ({r['ms'] / r['batch']:.1f})" for r in calls
                                         if r["variant"] == variant) + " |"
          for variant in dict.fromkeys(r["variant"] for r in calls)],
    ]
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stem = f"diffguard_gdm_batching{'_' + args.tag if args.tag else ''}"
    atomic_write_text(out / f"{stem}.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
