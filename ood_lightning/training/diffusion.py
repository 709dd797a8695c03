"""A class-conditional pixel diffusion model for DiffGuard, trained on any labelled in-distribution image set.

One diffusers `UNet2DModel` learns the noise epsilon for every class and, by label dropout, for a null class that
means "no class". So the same weights serve DiffGuard's classifier-free guidance (class vs null predictions) and,
with the null class, plain unconditional sampling for its classifier-guided path. The training is DDPM's epsilon
loss (Ho et al. 2020) on diffusers' `DDPMScheduler.add_noise`; an exponential moving average (EMA) of the weights is
what gets sampled and exported. The EMA is a submodule, so every checkpoint carries it and resuming keeps it.

At the end of fit the EMA UNet is saved with `save_pretrained` (what `load_pixel_unet` reads) beside
`diffguard.json`: the null class and noise schedule under the names of the DiffGuard config fields that must match.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor
from torchvision.utils import save_image

from ood_lightning.data.sources import NO_LABEL
from ood_lightning.ddim import alphas_cumprod_float32, ddim_sample, leading_tables
from ood_lightning.diffusion_export import EXPORT_INFO
from ood_lightning.ema import ema_update
from ood_lightning.noise import sample_integers, sample_noise
from ood_lightning.io import atomic_write, atomic_write_text
from ood_lightning.resume import resumable_checkpoints
from ood_lightning.wandb_logging import log_image_grid


class ClassConditionalDiffusion(L.LightningModule):
    """DDPM training of a class-conditional `UNet2DModel` whose extra class embedding is the null class.

    Args:
        num_classes: In-distribution classes (labels 0 .. num_classes - 1); the null class is `num_classes`, so the
            UNet has num_classes + 1 class embeddings. Unlabelled images (NO_LABEL) train the null class.
        sample_size: Image side the UNet works at; `data.image_size` must be the same.
        block_out_channels: Channels of each UNet level; the resolution halves between levels.
        layers_per_block: ResNet blocks per level.
        down_block_types: diffusers block of each level on the way down ("DownBlock2D", "AttnDownBlock2D").
        up_block_types: The same on the way up, deepest level first ("UpBlock2D", "AttnUpBlock2D").
        attention_head_dim: Channels per attention head.
        norm_num_groups: GroupNorm groups; must divide every entry of block_out_channels.
        dropout: Dropout inside the ResNet blocks.
        label_dropout: Probability that a training label is replaced by the null class.
        num_train_timesteps: Diffusion steps T.
        beta_schedule: "linear" or "scaled_linear" (diffusers' names); DiffGuard must be given the same.
        beta_start: First beta.
        beta_end: Last beta.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        lr_warmup_steps: Linear learning-rate warm-up over this many optimizer steps (0: none).
        ema_decay: EMA decay ceiling; the decay after n updates is min(ema_decay, (1 + n) / (10 + n)), so short
            runs are not dominated by the random initialisation.
        sample_every_n_epochs: Write a grid of EMA samples every this many epochs (0: never).
        samples_per_class: Columns of the grid: one row per class, then a row of null-class (unconditional) samples.
        sample_steps: DDIM steps (eta 0) of the grid.
        sample_guidance_scale: Classifier-free guidance scale w of the grid: eps_null + w (eps_class - eps_null);
            1 is the plain conditional model.
        seed: Seed of the grid's starting noise (the same every epoch, so grids show progress, not luck).
        export_dir: Folder the EMA UNet is saved to at the end of fit; default: `unet/` in the run folder (beside
            `checkpoints/`).
    """

    def __init__(
        self,
        num_classes: int,
        sample_size: int = 32,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        layers_per_block: int = 2,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types: tuple[str, ...] = ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim: int = 8,
        norm_num_groups: int = 32,
        dropout: float = 0.0,
        label_dropout: float = 0.15,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        lr_warmup_steps: int = 0,
        ema_decay: float = 0.999,
        sample_every_n_epochs: int = 1,
        samples_per_class: int = 8,
        sample_steps: int = 25,
        sample_guidance_scale: float = 3.0,
        seed: int = 0,
        export_dir: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if not 0.0 <= label_dropout <= 1.0:
            raise ValueError(f"label_dropout is a probability, got {label_dropout}")
        if not len(block_out_channels) == len(down_block_types) == len(up_block_types):
            raise ValueError("block_out_channels, down_block_types and up_block_types need one entry per UNet level, "
                             f"got {len(block_out_channels)}, {len(down_block_types)} and {len(up_block_types)}")
        if any(channels % norm_num_groups for channels in block_out_channels):
            raise ValueError(f"norm_num_groups {norm_num_groups} must divide every entry of block_out_channels "
                             f"{list(block_out_channels)}")
        self.unet = UNet2DModel(
            sample_size=sample_size, in_channels=3, out_channels=3, block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block, down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types), attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups, dropout=dropout, num_class_embeds=num_classes + 1)
        self.ema = copy.deepcopy(self.unet).requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        schedule = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, beta_start=beta_start,
                        beta_end=beta_end)
        self.noise_scheduler = DDPMScheduler(**schedule)
        self.alphas_cumprod = alphas_cumprod_float32(beta_schedule, beta_start, beta_end, num_train_timesteps)
        self.classes: list[str] = []  # the training set's class names, for the export; read at fit start
        self._run_dir: Path | None = None

    @property
    def null_class(self) -> int:
        return self.hparams.num_classes

    # -- training --------------------------------------------------------------------------------------
    def drop_labels(self, labels: Tensor, generator: torch.Generator | None = None,
                    p: float | None = None) -> Tensor:
        """Labels with each one replaced by the null class with probability p (default `label_dropout`); unknown
        labels (NO_LABEL) always become the null class."""
        p = self.hparams.label_dropout if p is None else p
        drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p
        return torch.where(drop | (labels == NO_LABEL), torch.full_like(labels, self.null_class), labels)

    def diffusion_loss(self, unet: UNet2DModel, images: Tensor, labels: Tensor, noise: Tensor,
                       timesteps: Tensor) -> Tensor:
        """DDPM's simple loss: MSE between the noise and `unet`'s prediction of it from the noised images.
        `images` are in [-1, 1]."""
        noisy = self.noise_scheduler.add_noise(images, noise, timesteps)
        return F.mse_loss(unet(noisy, timesteps, class_labels=labels).sample.float(), noise.float())

    def _images(self, batch: dict) -> Tensor:
        """The batch's images mapped to [-1, 1], after checking their size against the UNet's."""
        images = batch["image"]
        if images.shape[-2:] != (self.hparams.sample_size,) * 2:
            raise ValueError(f"images are {tuple(images.shape[-2:])} px but the UNet's sample_size is "
                             f"{self.hparams.sample_size}: set data.image_size to {self.hparams.sample_size}")
        return images * 2.0 - 1.0

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        if not batch["index"].numel():  # every image of the batch was unreadable (counted by the datamodule)
            return None
        x0 = self._images(batch)
        noise = torch.randn_like(x0)
        timesteps = torch.randint(0, self.hparams.num_train_timesteps, (len(x0),), device=x0.device)
        loss = self.diffusion_loss(self.unet, x0, self.drop_labels(batch["label"]), noise, timesteps)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"diffusion loss became {loss.item()} at global step {self.global_step}: "
                                     "lower the learning rate, add lr_warmup_steps or trainer.gradient_clip_val")
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=len(x0))
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """The EMA model's conditional loss on held-out images, with noise and timestep fixed per sample (seeded by
        its index), so the curve shows fit and over-fitting, not the luck of the draw."""
        if not batch["index"].numel():
            return
        x0, index, hp = self._images(batch), batch["index"], self.hparams
        noise = sample_noise(x0.shape[1:], index, seed=hp.seed, stream="val/diffusion", device=x0.device,
                             dtype=x0.dtype)
        timesteps = sample_integers(hp.num_train_timesteps, index, seed=hp.seed, stream="val/diffusion-timestep",
                                    device=x0.device)
        loss = self.diffusion_loss(self.ema, x0, self.drop_labels(batch["label"], p=0.0), noise, timesteps)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(x0))

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.log("train/ema_decay", self.update_ema())

    def update_ema(self) -> float:
        """One EMA update after each optimizer step (`ood_lightning.ema`); returns the decay used."""
        self.ema_updates += 1
        return ema_update(self.ema, self.unet, int(self.ema_updates), self.hparams.ema_decay)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.unet.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if not hp.lr_warmup_steps:
            return optimizer
        warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / hp.lr_warmup_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}

    def configure_callbacks(self):
        return resumable_checkpoints()  # last.ckpt + RNG states; it carries the EMA

    def on_fit_start(self) -> None:
        """Check the class count against the training set, before any work; find the run folder (every rank)."""
        train_set = getattr(self.trainer.datamodule, "train_set", None)
        self.classes = list(getattr(train_set, "classes", []))
        if self.classes and len(self.classes) != self.hparams.num_classes:
            raise ValueError(f"the training set has {len(self.classes)} classes ({', '.join(self.classes)}) but "
                             f"model.init_args.num_classes is {self.hparams.num_classes}")
        self._run_dir = Path(self.trainer.checkpoint_callback.dirpath).parent

    # -- sampling --------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, labels: Tensor, noise: Tensor, guidance_scale: float = 1.0, steps: int = 25) -> Tensor:
        """Images in [0, 1] from the EMA model by deterministic DDIM from `noise` [B, 3, H, W], with classifier-free
        guidance toward `labels` [B] (null-class rows are plain unconditional samples)."""
        _, table = leading_tables(self.alphas_cumprod, steps)  # diffusers' DDIMScheduler defaults: clean end at 1
        x = noise.to(self.device, next(self.ema.parameters()).dtype)
        self.ema.eval()  # no dropout while sampling, whatever mode Lightning has the module in
        x = ddim_sample(lambda x_t, t, y: self.ema(x_t, t, class_labels=y).sample, x, table, labels.to(self.device),
                        self.null_class, guidance_scale, clip=True)
        self.ema.train(self.training)
        return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def sample_grid(self) -> Tensor:
        """`samples_per_class` samples of every class, then of the null class, from the same seeded noise."""
        hp = self.hparams
        labels = torch.arange(self.null_class + 1).repeat_interleave(hp.samples_per_class)
        noise = torch.randn((len(labels), 3, hp.sample_size, hp.sample_size),
                            generator=torch.Generator().manual_seed(hp.seed))
        return self.sample(labels, noise, hp.sample_guidance_scale, hp.sample_steps)

    def on_train_epoch_end(self) -> None:
        every = self.hparams.sample_every_n_epochs
        if every and (self.current_epoch + 1) % every == 0 and self.trainer.is_global_zero:
            images = self.sample_grid()
            caption = f"epoch {self.current_epoch}: rows = classes 0..{self.null_class - 1}, then unconditional"
            nrow = self.hparams.samples_per_class  # written whole or not at all, as every output file
            atomic_write(self._run_dir / "samples" / f"epoch_{self.current_epoch:03d}.png",
                         lambda f: save_image(images, f, nrow=nrow, format="png"))
            log_image_grid(self.loggers, "train/samples", images, caption=caption,
                           nrow=self.hparams.samples_per_class, step=self.global_step)

    # -- export ----------------------------------------------------------------------------------------
    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            self.export(self.hparams.export_dir or self._run_dir / "unet")

    def export(self, folder: str | Path) -> Path:
        """Save the EMA UNet (diffusers folder) and diffguard.json, the settings a DiffGuard config needs for it."""
        folder = Path(folder)
        self.ema.save_pretrained(folder)
        hp = self.hparams
        info = {"null_class": self.null_class, "num_classes": hp.num_classes, "classes": self.classes,
                "image_size": hp.sample_size, "num_train_timesteps": hp.num_train_timesteps,
                "beta_schedule": hp.beta_schedule, "beta_start": hp.beta_start, "beta_end": hp.beta_end,
                "prediction_type": "epsilon", "ema_updates": int(self.ema_updates)}
        atomic_write_text(folder / EXPORT_INFO, json.dumps(info, indent=2) + "\n")
        return folder
