"""DiffGuard's classifier-free path (LDM): invert in latent space, re-synthesise with masked guidance, compare.

For each test image: the classifier-under-protection predicts a label; the image's latent is DDIM-inverted with
the null class (no guidance) all the way up the sub-sequence; re-synthesis from there uses classifier-free
guidance toward the predicted label, applied only inside the classifier's Grad-CAM region for that label
("Distinct Semantic Guidance") and the unconditional prediction elsewhere; the decoded synthesis is compared with
the input, and the distance is the OOD score (an in-distribution image comes back as itself, an OOD image is
pulled toward the wrong class where the classifier looks). Defaults are the released config `ldm-exp2.25`
(docs/diffguard.md (Classifier-free path)): 25 DDIM steps (eta 0) on CompVis' sub-sequence
[1, 41, ..., 961] of the scaled-linear schedule 0.0015 -> 0.0195, guidance scale 10, Grad-CAM cut 0.3 (the paper
reports 0.2 as best), 256 px input, DISTS against the input.

The DDIM steps are the rows of `compvis_tables`: CompVis' sampler, whose inversion evaluates the model at t (the
level it moves to) and moves from alpha-bar[t - T/n] (alpha-bar[0] before the first step) to alpha-bar[t]; the
re-synthesis moves back along the same pairs (docs/diffguard.md (Released settings)).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ood_lightning.ddim import DDIMTable, alphas_cumprod_float32, ddim_invert, ddim_sample, leading_tables
from ood_lightning.diffusion_export import check_training_schedule

from ..detector import DiffGuardDetector
from .cam import GradCAMMask
from .latent_models import load_latent_model


def compvis_tables(num_steps: int = 25, beta_schedule: str = "scaled_linear", beta_start: float = 0.0015,
                   beta_end: float = 0.0195, num_train_timesteps: int = 1000, steps_offset: int = 1,
                   set_alpha_to_one: bool = False) -> tuple[DDIMTable, DDIMTable]:
    """(inversion, re-synthesis) tables of CompVis' DDIM sampler: the sub-sequence range(0, T, T/n) + steps_offset
    ([1, 41, ..., 961] for the released 25 steps), the clean end at alpha-bar[0] (1 with set_alpha_to_one),
    float32 entries as the released LDM results were computed with."""
    if num_steps <= 0 or num_train_timesteps % num_steps:
        raise ValueError(f"num_steps must divide num_train_timesteps {num_train_timesteps} (CompVis' DDIM "
                         f"sub-sequence is evenly strided), got {num_steps}")
    alpha_bar = alphas_cumprod_float32(beta_schedule, beta_start, beta_end, num_train_timesteps)
    return leading_tables(alpha_bar, num_steps, steps_offset, 1.0 if set_alpha_to_one else alpha_bar[0])


class DiffGuardLDM(DiffGuardDetector):
    """DiffGuard with classifier-free guidance inside the Grad-CAM mask on a class-conditional latent model.

    Scores: one per entry of `similarities` (distances, higher = OOD). Saved per sample beside them: `prediction`
    (the classifier's label), `target` (the label guided toward: the prediction, or the oracle's) and `cam_area`
    (the fraction of the latent grid that is guided: 1 without the mask), `unet_evals` and `classifier_evals` (the
    image passes through the diffusion model and the classifier, as DiffGuardGDM reports them; a cascade's cost).

    Args:
        diffusion_model: CompVis cin256-v2 `model.ckpt` (converted on load), a folder converted from it by
            `compvis_checkpoint`, a diffusers DiTPipeline folder (e.g. DiT-XL-2-256), or the pixel-space export of
            `configs/diffusion/` (a folder with diffguard.json); see latent_models.py.
        classifier: Classifier-under-protection, a key of ood_lightning.classifiers.CLASSIFIERS; it also gives
            the Grad-CAM. Its classes must be classes of the diffusion model.
        classifier_weights: Its local weight file; null = random initialisation (tests only).
        num_classes: Classifier outputs; default: read from the weight file.
        mean: Classifier input normalisation mean; default: the one its published weights expect.
        std: As mean.
        image_size: Side of the square images the first stage encodes (released: 256, DiT-XL-2-256: 256); the data
            must deliver this size (data.image_size / center_crop).
        num_steps: DDIM steps of both inversion and re-synthesis (released: 25); must divide num_train_timesteps.
        beta_schedule: Training noise schedule of the diffusion model, "linear" or "scaled_linear".
        beta_start: First training beta.
        beta_end: Last training beta.
        num_train_timesteps: Training timesteps T.
        steps_offset: Added to the sub-sequence's timesteps (CompVis: 1, giving [1, 41, ..., 961]).
        set_alpha_to_one: Treat the clean end as alpha-bar 1 instead of alpha-bar[0] (CompVis: false).
        guidance_scale: Classifier-free guidance scale w (released: 10).
        use_cam: Guide only inside the Grad-CAM mask of the label guided toward (released); false guides
            everywhere (the oracle config).
        cam_cut: Grad-CAM threshold after per-image min-max (released 0.3, paper's best 0.2); negative: guide
            where the CAM is below |cam_cut|.
        reference: What the synthesis is compared with: "input" (released) or "unguided", the plain unconditional
            re-synthesis from the same latent (the reference's uncond_aux; twice the re-synthesis cost).
        similarities: Distances to score with: dists, lpips, ssim, psnr, l2, logits_l1.
        oracle: Guide toward the true label for in-distribution images and a random label for OOD ones (the
            paper's upper bound, released with use_cam false; needs labels on the ID set).
        vgg16_weights: torchvision's vgg16-397923af.pth (DISTS and LPIPS need it).
        dists_weights: piq's DISTS weight file.
        lpips_weights: piq's LPIPS weight file.
        grid_images: Images per test set shown in grids/<set>.png (input, [reference,] synthesis, mask rows); 0: none.
        seed: Seed of the oracle's random OOD labels.
    """

    extra_names = ("prediction", "target", "cam_area", "unet_evals", "classifier_evals")

    def __init__(
        self,
        diffusion_model: str,
        classifier: str,
        classifier_weights: str | None,
        num_classes: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        image_size: int = 256,
        num_steps: int = 25,
        beta_schedule: str = "scaled_linear",
        beta_start: float = 0.0015,
        beta_end: float = 0.0195,
        num_train_timesteps: int = 1000,
        steps_offset: int = 1,
        set_alpha_to_one: bool = False,
        guidance_scale: float = 10.0,
        use_cam: bool = True,
        cam_cut: float = 0.3,
        reference: Literal["input", "unguided"] = "input",
        similarities: list[str] = ["dists"],  # noqa: B006 (LightningCLI reads the default; never mutated)
        oracle: bool = False,
        vgg16_weights: str | None = None,
        dists_weights: str | None = None,
        lpips_weights: str | None = None,
        grid_images: int = 8,
        seed: int = 0,
    ):
        super().__init__(classifier, classifier_weights, num_classes, mean, std, reference, similarities, oracle,
                         vgg16_weights, dists_weights, lpips_weights, grid_images, seed)
        self.save_hyperparameters()
        self.inversion_table, self.resynthesis_table = compvis_tables(
            num_steps, beta_schedule, beta_start, beta_end, num_train_timesteps, steps_offset, set_alpha_to_one)
        self.latent_model = load_latent_model(diffusion_model)
        self.latent_model.latent_shape(image_size)  # refuses a size the model cannot take, before any work
        check_training_schedule(diffusion_model, self.latent_model.training_schedule or {}, self.hparams)
        if self.classifier.num_classes > self.latent_model.num_classes:
            raise ValueError(f"the classifier predicts {self.classifier.num_classes} classes but the diffusion model "
                             f"knows {self.latent_model.num_classes} (null class {self.latent_model.null_class}): "
                             "its labels must be classes of the diffusion model")
        self.cam_mask = GradCAMMask(self.classifier, cam_cut) if use_cam else None

    # -- scoring ---------------------------------------------------------------------------------------
    def score(self, batch: dict, dataset: str) -> dict[str, Tensor]:
        hp = self.hparams
        images = batch["image"].float().clamp(0.0, 1.0)
        if images.shape[-2:] != (hp.image_size, hp.image_size):
            raise ValueError(f"DiffGuardLDM encodes {hp.image_size}x{hp.image_size} images (image_size) but the data "
                             f"delivers {tuple(images.shape[-2:])}: set data.image_size / data.center_crop to "
                             f"{hp.image_size}")
        with torch.no_grad():
            prediction = self.classifier(images).argmax(-1)
            target = self.target_labels(batch, prediction, dataset)
            latents = self.latent_model.encode(images * 2.0 - 1.0)
        mask = None if self.cam_mask is None else self.cam_mask(images, target, tuple(latents.shape[-2:]))
        null = self.latent_model.null_class
        twin = hp.reference == "unguided"
        with torch.no_grad():
            latents = ddim_invert(self.latent_model.eps, latents, self.inversion_table,
                                  torch.full((len(latents),), null, dtype=torch.int64, device=latents.device))
            labels, guide_mask = target, mask
            if twin:  # the unguided twin: the same latents guided toward the null class, where guidance is a no-op
                latents, labels = torch.cat([latents, latents]), torch.cat([target, torch.full_like(target, null)])
                guide_mask = None if mask is None else torch.cat([mask, mask])
            out = ddim_sample(self.latent_model.eps, latents, self.resynthesis_table, labels, null,
                              hp.guidance_scale, guide_mask)
            out = (self.latent_model.decode(out) + 1.0) / 2.0
            synthesis, reference = (out[: len(images)], out[len(images):]) if twin else (out, images)
        scores = self.distances_between(reference, synthesis)
        cam_area = torch.ones(len(images), device=images.device) if mask is None else mask.float().mean((1, 2, 3))
        rows = {"input": images, **({"unguided twin": reference} if twin else {}), "synthesis": synthesis}
        if mask is not None:  # the latent-grid mask the guidance used, shown at image size
            rows["guidance mask"] = F.interpolate(mask.float(), size=images.shape[-2:], mode="nearest").expand(
                -1, 3, -1, -1)
        self.save_grid(dataset, rows)
        # per image: one inversion pass per step; per re-synthesis step a [null, label] pair, for the twin too
        unet_evals = len(self.inversion_table) + 2 * len(self.resynthesis_table) * (2 if twin else 1)
        classifier_evals = 1 + (mask is not None)  # the prediction, and Grad-CAM's forward and backward pass
        return {**scores, "prediction": prediction, "target": target, "cam_area": cam_area,
                "unet_evals": torch.full_like(cam_area, unet_evals), "classifier_evals":
                torch.full_like(cam_area, classifier_evals)}
