"""DiffGuard's classifier-guided path (GDM): invert, re-synthesise toward the predicted label, compare.

For each test image: the classifier-under-protection predicts a label; DDIM inversion of the image on an
unconditional pixel diffusion model stops per sample once the latent is far enough from the input (adaptive early
stop); re-synthesis from one step above that level is guided toward the predicted label with Clean Grad; the
distance between the synthesis and a reference is the OOD score (an in-distribution image is re-synthesised into
itself, an OOD image drifts toward the wrong class). Defaults are the released headline config `exp6.1`
(docs/diffguard.md (Classifier-guided path)), whose reference is the unguided twin: a plain DDIM
reconstruction from the same latent and start index. The paper describes comparing with the input instead:
`reference: input`.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ood_lightning.diffusion_export import EXPORT_INFO, check_training_schedule, read_export_info

from ..detector import DiffGuardDetector
from ..similarity import dists_similarity_unclamped, psnr_db
from .guidance import CleanGradGuidance, Cutouts
from .inversion import invert
from .respacing import respaced_tables
from .resynthesis import resynthesize
from .unet import load_pixel_unet


class DiffGuardGDM(DiffGuardDetector):
    """DiffGuard with classifier guidance on a pixel-space unconditional diffusion model.

    Scores: one per entry of `similarities` (distances, higher = OOD). Saved per sample beside them: `prediction`
    (the classifier's label), `target` (the label guided toward: the prediction, or the oracle's), `stop_index`
    (respaced index where inversion stopped), `unet_evals` and `classifier_evals` (image passes spent on it).

    Args:
        diffusion_model: A diffusers UNet2DModel folder, or openai's 256x256_diffusion_uncond.pt (converted on load).
        classifier: Classifier-under-protection, a key of ood_lightning.classifiers.CLASSIFIERS; it also guides.
        classifier_weights: Its local weight file; null = random initialisation (tests only).
        num_classes: Classifier outputs; default: read from the weight file.
        mean: Classifier input normalisation mean; default: the one its published weights expect.
        std: As mean.
        num_steps: Respacing "ddimN": N evenly strided training timesteps (released: 100, i.e. stride 10).
        beta_schedule: Training noise schedule of the diffusion model, "linear" or "scaled_linear".
        beta_start: First training beta.
        beta_end: Last training beta.
        num_train_timesteps: Training timesteps T.
        max_inversion_steps: Inversion depth limit (released: 90 = 100 - early_stop_steps 10).
        stop_psnr: Stop a sample's inversion once PSNR(latent, input) falls below this, in standard dB on [0, 1]
            images (released 6.39 dB = the code's 48.5 on its 255-peak [-1, 1] scale); null: no PSNR rule.
        stop_dists_similarity: Stop once 1 - DISTS(latent, input) falls below this (released 0.38); null: none.
        resynthesis_offset: Respaced steps above the latent's level where re-synthesis starts (released: 1, from
            forback_skip_diff 3: it starts at stop index + 2).
        clip_denoised: Clip x0 estimates to [-1, 1] and re-derive epsilon (guided-diffusion's clip_denoised).
        guidance_scale: Classifier guidance scale s (released: 3).
        cutouts: Random crops per guided step (released: 8); 0 = the classifier sees the whole image.
        cutout_size: Side the crops are resized to, the classifier's input size (released: 224).
        cutout_seed: Seed of the crop sequence (released: 100).
        clean_x0: Differentiate at the x0-hat / x_t blend (Clean Grad, eq. 7); false: at x_t (ablation).
        reference: What the synthesis is compared with: "unguided" (the unguided twin, released exp6.1) or
            "input" (the paper's description; half the diffusion cost).
        similarities: Distances to score with: dists, lpips, ssim, psnr, l2, logits_l1.
        oracle: Guide toward the true label for in-distribution images and a random label for OOD ones (the
            paper's upper bound; needs labels on the ID set).
        null_class: For a class-conditional UNet2DModel, the class index that means "unconditional"; read from the
            diffguard.json of a model trained by configs/diffusion/ (a different value here is refused).
        vgg16_weights: torchvision's vgg16-397923af.pth (DISTS, LPIPS and the DISTS stop rule need it).
        dists_weights: piq's DISTS weight file.
        lpips_weights: piq's LPIPS weight file.
        adm_num_head_channels: Attention head width when converting an openai checkpoint (64 for the released).
        grid_images: Images per test set shown in grids/<set>.png (input, reference, synthesis rows); 0: none.
        seed: Seed of the oracle's random OOD labels.
    """

    extra_names = ("prediction", "target", "stop_index", "unet_evals", "classifier_evals")

    def __init__(
        self,
        diffusion_model: str,
        classifier: str,
        classifier_weights: str | None,
        num_classes: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        num_steps: int = 100,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        num_train_timesteps: int = 1000,
        max_inversion_steps: int = 90,
        stop_psnr: float | None = 6.39,
        stop_dists_similarity: float | None = 0.38,
        resynthesis_offset: int = 1,
        clip_denoised: bool = True,
        guidance_scale: float = 3.0,
        cutouts: int = 8,
        cutout_size: int = 224,
        cutout_seed: int = 100,
        clean_x0: bool = True,
        reference: Literal["unguided", "input"] = "unguided",
        similarities: list[str] = ["dists"],  # noqa: B006 (LightningCLI reads the default; never mutated)
        oracle: bool = False,
        null_class: int | None = None,
        vgg16_weights: str | None = None,
        dists_weights: str | None = None,
        lpips_weights: str | None = None,
        adm_num_head_channels: int = 64,
        grid_images: int = 8,
        seed: int = 0,
    ):
        super().__init__(classifier, classifier_weights, num_classes, mean, std, reference, similarities, oracle,
                         vgg16_weights, dists_weights, lpips_weights, grid_images, seed,
                         helper_measures=("dists",) if stop_dists_similarity is not None else ())
        self.save_hyperparameters()
        if resynthesis_offset < 0:
            raise ValueError(f"resynthesis_offset must be >= 0, got {resynthesis_offset}")
        self.inversion_table, self.resynthesis_table = respaced_tables(num_steps, beta_schedule, beta_start, beta_end,
                                                                       num_train_timesteps)
        if not 0 < max_inversion_steps <= num_steps:
            raise ValueError(f"max_inversion_steps must be in [1, {num_steps}], got {max_inversion_steps}")
        self.null_class = null_class
        if (info := read_export_info(diffusion_model)) is not None:  # a model trained by configs/diffusion/
            check_training_schedule(diffusion_model, info, self.hparams)
            if null_class not in (None, info["null_class"]):
                raise ValueError(f"null_class is {null_class} in this config but {info['null_class']} in "
                                 f"{diffusion_model}/{EXPORT_INFO}, the null class the model was trained with; "
                                 "leave null_class out (it is read from there)")
            self.null_class = info["null_class"]
        self.unet = load_pixel_unet(diffusion_model, adm_num_head_channels)
        if info is not None and self.unet.config.num_class_embeds != info["null_class"] + 1:  # as DiffGuardLDM
            raise ValueError(f"{diffusion_model}: the UNet has {self.unet.config.num_class_embeds} class embeddings "
                             f"but {EXPORT_INFO} names class {info['null_class']} as the null class (expected the "
                             "last); re-export the model with configs/diffusion/")
        self.guidance = CleanGradGuidance(self.classifier, guidance_scale,
                                          Cutouts(cutouts, cutout_size, cutout_seed), use_x0=clean_x0)

    @property
    def stop_dists(self) -> torch.nn.Module | None:
        """The DISTS of the early-stop rule (None when the rule has no DISTS part), built on the VGG16 copy of the
        scoring measures: the scoring DISTS itself when that is on."""
        return self.helpers["dists"] if "dists" in self.helpers else None

    # -- the diffusion model ---------------------------------------------------------------------------
    def eps(self, x: Tensor, k: int, rows: Tensor) -> Tensor:
        """Epsilon at respaced index k: the UNet at training timestep timesteps[k], first C output channels (the
        rest are guided-diffusion's learned variance)."""
        labels = None
        if self.null_class is not None:
            labels = torch.full((len(x),), self.null_class, dtype=torch.int64, device=x.device)
        t = torch.full((len(x),), self.inversion_table.timesteps[k], dtype=torch.int64, device=x.device)
        out = self.unet(x, t, class_labels=labels).sample
        return out[:, : x.shape[1]].float()

    def should_stop(self, latent: Tensor, image: Tensor, rows: Tensor) -> Tensor:
        """The adaptive early-stop rule: PSNR below stop_psnr or 1 - DISTS below stop_dists_similarity."""
        hp = self.hparams
        stop = torch.zeros(len(latent), dtype=torch.bool, device=latent.device)
        if hp.stop_psnr is not None:
            stop |= psnr_db(latent, image) < hp.stop_psnr
        if self.stop_dists is not None:
            stop |= dists_similarity_unclamped(self.stop_dists, latent, image) < hp.stop_dists_similarity
        return stop

    # -- scoring ---------------------------------------------------------------------------------------
    def score(self, batch: dict, dataset: str) -> dict[str, Tensor]:
        hp = self.hparams
        images = batch["image"].float()
        with torch.no_grad():
            prediction = self.classifier(images).argmax(-1)
        target = self.target_labels(batch, prediction, dataset)
        x = _resize(images * 2.0 - 1.0, self.unet.config.sample_size)
        early_stop = hp.stop_psnr is not None or self.stop_dists is not None
        latent, stop = invert(self.eps, x, self.inversion_table, hp.max_inversion_steps,
                              stop_fn=self.should_stop if early_stop else None, clip=hp.clip_denoised)
        start = (stop + 1 + hp.resynthesis_offset).clamp(max=len(self.resynthesis_table) - 1)
        twin = hp.reference == "unguided"  # rows [guided synthesis, unguided twin] from the same latents
        labels = torch.cat([target, target]) if twin else target
        guided = torch.arange(len(labels), device=labels.device) < len(target)
        rows_start = torch.cat([start, start]) if twin else start

        def guide(x_t: Tensor, x0_raw: Tensor, alpha_bar: float, rows: Tensor, steps: Tensor) -> Tensor:
            return self.guidance(x_t, x0_raw, alpha_bar, labels[rows], steps, guided[rows])

        out = resynthesize(self.eps, torch.cat([latent, latent]) if twin else latent, rows_start,
                           self.resynthesis_table, guide=guide, clip=hp.clip_denoised)
        out = ((_resize(out, images.shape[-1]) + 1.0) / 2.0).clamp(0.0, 1.0)
        synthesis, reference = (out[: len(images)], out[len(images):]) if twin else (out, images.clamp(0.0, 1.0))
        scores = self.distances_between(reference, synthesis)
        self.save_grid(dataset, {"input": images, **({"unguided twin": reference} if twin else {}),
                                 "synthesis": synthesis})
        steps = start + 1
        return {
            **scores,
            "prediction": prediction,
            "target": target,
            "stop_index": stop,
            "unet_evals": stop + 1 + steps * (2 if twin else 1),
            "classifier_evals": 1 + steps * max(hp.cutouts, 1),
        }


def _resize(x: Tensor, size: int) -> Tensor:
    """Bilinear resize of square images without antialiasing, as the reference's torchvision 0.11 Resize did."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
