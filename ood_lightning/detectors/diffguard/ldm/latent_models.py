"""The class-conditional latent diffusion models DiffGuard's classifier-free path runs on, behind one interface.

DiffGuard's LDM path needs five things from its diffusion model: encode an image to a latent, decode a latent back,
the noise prediction for a class label, the label that means "no class" (the null class, trained by label
dropout, which makes classifier-free guidance possible) and the latent grid of an image size. Three back-ends:

- `CompVisLDM`: CompVis latent-diffusion cin256-v2, the model of the released LDM results (converted by
  `compvis_checkpoint`). VQ-f4 first stage; `encode` is the pre-quantisation latent and `decode` quantises first, as LDM's encode/decode_first_stage; no
  latent scaling (LDM's scale_factor is 1). The UNet reads the class through cross-attention on
  `class_embedding(y)[:, None]`; the null class is the embedding's last row (1000 of 1001).
- `DiTModel`: DiT (Peebles & Xie 2023, e.g. facebook/DiT-XL-2-256) from a diffusers DiTPipeline folder, for users
  without the LDM checkpoint. KL-f8 first stage. The reference has no DiT path; `encode` takes the posterior's mean
  (deterministic, like the VQ path) times the VAE's `scaling_factor` (0.18215, what DiT was trained with), `decode`
  divides it back out, as DiTPipeline does. The transformer reads the class through adaLN-Zero; the null class is
  `num_embeds_ada_norm` (1000), and of its 8 output channels the first `in_channels` (4) are epsilon, the rest its
  learned variance.
- `PixelDiffusion`: a class-conditional pixel-space diffusers `UNet2DModel` trained by this project's
  `configs/diffusion/` (its export folder, with `diffguard.json`), for your own data. The reference has no such
  path; the "latent" is the image itself (`encode` and `decode` are the identity, decode clamps), so the Grad-CAM
  mask is applied at full resolution. The null class and the training noise schedule are read from
  `diffguard.json`, and DiffGuardLDM refuses a config whose schedule differs from the one the model was trained
  with.

Caveat for OOD numbers: both first stages were trained on OpenImages (the LDM VQ-f4; Stable Diffusion's KL-f8 VAE
that DiT uses, before its LAION fine-tuning), which is also an OOD test set (OpenImage-O): reconstructions of that
set are not a clean far-OOD signal.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DiTTransformer2DModel, UNet2DModel
from torch import Tensor, nn

from ood_lightning.diffusion_export import EXPORT_INFO, SCHEDULE_KEYS, read_export_info

from ..pixel_unet import load_unet_folder
from .compvis_checkpoint import LatentDiffusionParts, load_ldm_checkpoint, load_ldm_parts


class LatentDiffusionModel(nn.Module):
    """Images in [-1, 1] <-> latents, and epsilon(latents, t, labels); `null_class` is the unconditional label.

    Every part is frozen and in eval mode (label dropout off); each sample's result depends on that sample alone.
    """

    null_class: int
    training_schedule: dict | None = None  # the noise schedule the model was trained with, where the files say

    @property
    def num_classes(self) -> int:
        """Real class labels the model knows: 0 .. num_classes - 1 (the null class is not one of them)."""
        raise NotImplementedError

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """(channels, height, width) of the latent of a square image of side `image_size`; ValueError if the
        model cannot take that size."""
        raise NotImplementedError

    def encode(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, latents: Tensor) -> Tensor:
        """Images in [-1, 1] (clamped)."""
        raise NotImplementedError

    def eps(self, latents: Tensor, t: int, labels: Tensor) -> Tensor:
        """The noise prediction (float32) for `latents` [B, C, h, w] at training timestep `t`, class `labels` [B]."""
        raise NotImplementedError


def _downsampling(block_out_channels: list[int] | tuple[int, ...]) -> int:
    """Spatial factor of a diffusers autoencoder: one halving between consecutive levels."""
    return 2 ** (len(block_out_channels) - 1)


class CompVisLDM(LatentDiffusionModel):
    """CompVis latent-diffusion (cin256-v2) as converted by `compvis_checkpoint`: VQModel, UNet2DConditionModel,
    class embedding."""

    def __init__(self, parts: LatentDiffusionParts):
        super().__init__()
        self.vae, self.unet, self.class_embedding = parts.vae, parts.unet, parts.class_embedding
        self.null_class = parts.null_class
        self.requires_grad_(False).eval()

    @property
    def num_classes(self) -> int:
        return self.class_embedding.num_embeddings - 1

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        factor = _downsampling(self.vae.config.block_out_channels)
        if image_size % factor:
            raise ValueError(f"the VQ first stage downsamples by {factor}; image_size {image_size} is not a multiple")
        return self.vae.config.latent_channels, image_size // factor, image_size // factor

    def encode(self, images: Tensor) -> Tensor:
        return self.vae.encode(images).latents

    def decode(self, latents: Tensor) -> Tensor:
        return self.vae.decode(latents).sample.clamp(-1.0, 1.0)

    def eps(self, latents: Tensor, t: int, labels: Tensor) -> Tensor:
        context = self.class_embedding(labels)[:, None, :]
        timesteps = torch.full((len(latents),), t, dtype=torch.int64, device=latents.device)
        return self.unet(latents, timesteps, encoder_hidden_states=context).sample.float()


class DiTModel(LatentDiffusionModel):
    """DiT from a diffusers DiTPipeline folder: DiTTransformer2DModel and AutoencoderKL."""

    def __init__(self, transformer: DiTTransformer2DModel, vae: AutoencoderKL):
        super().__init__()
        self.transformer, self.vae = transformer, vae
        self.null_class = int(transformer.config.num_embeds_ada_norm)
        self.requires_grad_(False).eval()

    @property
    def num_classes(self) -> int:
        return self.null_class

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        factor = _downsampling(self.vae.config.block_out_channels)
        side = self.transformer.config.sample_size
        if image_size != side * factor:
            raise ValueError(f"this DiT works on {side}x{side} latents, i.e. {side * factor} px images (its "
                             f"positional embedding is fixed); image_size is {image_size}")
        return self.transformer.config.in_channels, side, side

    def encode(self, images: Tensor) -> Tensor:
        return self.vae.encode(images).latent_dist.mean * self.vae.config.scaling_factor

    def decode(self, latents: Tensor) -> Tensor:
        return self.vae.decode(latents / self.vae.config.scaling_factor).sample.clamp(-1.0, 1.0)

    def eps(self, latents: Tensor, t: int, labels: Tensor) -> Tensor:
        timesteps = torch.full((len(latents),), t, dtype=torch.int64, device=latents.device)
        out = self.transformer(latents, timestep=timesteps, class_labels=labels).sample
        return out[:, : self.transformer.config.in_channels].float()


class PixelDiffusion(LatentDiffusionModel):
    """A class-conditional pixel-space UNet2DModel (`num_class_embeds` = classes + 1, the last the null class), as
    `configs/diffusion/` trains and exports it."""

    def __init__(self, unet: UNet2DModel, info: dict):
        super().__init__()
        self.unet = unet
        self.null_class = int(info["null_class"])
        self.training_schedule = {key: info[key] for key in SCHEDULE_KEYS}
        self.requires_grad_(False).eval()

    @property
    def num_classes(self) -> int:
        return self.null_class

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        side = self.unet.config.sample_size
        if image_size != side:
            raise ValueError(f"this diffusion model was trained on {side}x{side} images; image_size is {image_size}")
        return self.unet.config.in_channels, side, side

    def encode(self, images: Tensor) -> Tensor:
        return images

    def decode(self, latents: Tensor) -> Tensor:
        return latents.clamp(-1.0, 1.0)

    def eps(self, latents: Tensor, t: int, labels: Tensor) -> Tensor:
        timesteps = torch.full((len(latents),), t, dtype=torch.int64, device=latents.device)
        return self.unet(latents, timesteps, class_labels=labels).sample.float()


def load_pixel_diffusion(folder: str | Path) -> PixelDiffusion:
    """The export folder of `configs/diffusion/` (a diffusers UNet2DModel folder with diffguard.json)."""
    info = read_export_info(folder)
    unet = load_unet_folder(folder)
    if unet.config.num_class_embeds != info["null_class"] + 1:
        raise ValueError(f"{folder}: the UNet has {unet.config.num_class_embeds} class embeddings but "
                         f"{EXPORT_INFO} names class {info['null_class']} as the null class (expected the last)")
    return PixelDiffusion(unet, info)


def load_dit(folder: str | Path) -> DiTModel:
    """A DiTPipeline folder (`transformer/` and `vae/` subfolders, as DiTPipeline.save_pretrained writes and the
    facebook/DiT-XL-2-256 repository holds); local files only. The hub's legacy `Transformer2DModel` config of the
    transformer loads as a DiTTransformer2DModel."""
    folder = Path(folder)
    needed = [folder / "transformer" / "config.json", folder / "vae" / "config.json"]
    if missing := [str(p) for p in needed if not p.is_file()]:
        raise FileNotFoundError(f"{folder} is not a DiT pipeline folder: missing {missing}. It should hold a "
                                "diffusers DiTPipeline (e.g. a local copy of facebook/DiT-XL-2-256: transformer/ "
                                "and vae/ subfolders)")
    kwargs = dict(local_files_only=True, torch_dtype=torch.float32)
    transformer = DiTTransformer2DModel.from_pretrained(folder / "transformer", **kwargs)
    vae = AutoencoderKL.from_pretrained(folder / "vae", **kwargs)
    return DiTModel(transformer, vae)


def load_latent_model(path: str | Path) -> LatentDiffusionModel:
    """The back-end a local path holds:
    - a file: CompVis latent-diffusion's cin256-v2 `model.ckpt`, converted on load;
    - a folder with `ldm_parts.json`: the same model converted once by `compvis_checkpoint` (`save_ldm_parts`);
    - a folder with `transformer/`: a diffusers DiTPipeline (e.g. DiT-XL-2-256);
    - a folder with `diffguard.json`: a pixel-space model trained by this project's `configs/diffusion/`.
    """
    p = Path(path)
    if p.is_file():
        return CompVisLDM(load_ldm_checkpoint(p))
    if (p / "ldm_parts.json").is_file():
        return CompVisLDM(load_ldm_parts(p))
    if (p / "transformer").is_dir():
        return load_dit(p)
    if (p / EXPORT_INFO).is_file():
        return load_pixel_diffusion(p)
    problem = "is a folder with neither layout" if p.is_dir() else "does not exist"
    raise FileNotFoundError(
        f"latent diffusion model not found: {p} {problem}. DiffGuard's classifier-free path needs one of: CompVis "
        "latent-diffusion's class-conditional ImageNet model cin256-v2 (model.ckpt, linked from "
        "https://github.com/CompVis/latent-diffusion, e.g. checkpoints/cin256-v2/model.ckpt); a folder converted "
        "from it by `python -m ood_lightning.detectors.diffguard.ldm.compvis_checkpoint` (ldm_parts.json, vqvae/, "
        "unet/); "
        "or a diffusers DiTPipeline folder with transformer/ and vae/ subfolders (e.g. a local copy of "
        "facebook/DiT-XL-2-256 in checkpoints/DiT-XL-2-256); or the export folder of a model trained with "
        "configs/diffusion/ (unet/ in its run folder, with diffguard.json). Nothing is downloaded.")
