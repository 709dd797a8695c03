"""A classifier-under-protection for data that comes without one: an architecture of `ood_lightning.classifiers`,
trained from random initialisation with cross-entropy. At the end of fit its weights are written in exactly the key
layout `build_classifier(name, weights=<file>)` loads with strict=True, so a DiffGuard or baseline config takes the
file as `classifier_weights` unchanged. The architecture's own input normalisation is used, the one
`build_classifier` applies by default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from ood_lightning.classifiers import CLASSIFIERS, build_classifier
from ood_lightning.io import atomic_write
from ood_lightning.resume import resumable_checkpoints


def augment(images: Tensor, crop_padding: int, horizontal_flip: bool) -> Tensor:
    """The usual CIFAR augmentation on a batch: a random crop of the original size from the image zero-padded by
    `crop_padding` pixels, and a random left-right flip; each sample draws its own."""
    if crop_padding:
        size = images.shape[-2:]
        padded = F.pad(images, [crop_padding] * 4)
        offsets = torch.randint(0, 2 * crop_padding + 1, (len(images), 2)).tolist()
        images = torch.stack([p[:, dy:dy + size[0], dx:dx + size[1]] for p, (dy, dx) in zip(padded, offsets)])
    if horizontal_flip:
        flip = torch.rand(len(images), device=images.device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    return images


class ClassifierTraining(L.LightningModule):
    """Cross-entropy training of a `Classifier` (normalisation inside, images in [0, 1]) with a cosine learning rate.

    Validation (val/loss, val/acc) runs on whatever validation loader the trainer gets; train/loss and train/acc
    are logged every step and epoch.

    Args:
        classifier: Architecture, a key of ood_lightning.classifiers.CLASSIFIERS (e.g. cifar_resnet20).
        num_classes: Classes of the training set (labels 0 .. num_classes - 1).
        optimizer: "sgd" (momentum, Nesterov) or "adamw".
        lr: Peak learning rate; it follows a cosine from there to 0 over the run's optimizer steps.
        momentum: SGD momentum.
        weight_decay: Weight decay of either optimizer.
        crop_padding: Random crops after zero padding by this many pixels (0: off; 4 is the CIFAR recipe).
        horizontal_flip: Random left-right flips (off for digits and text: a mirrored 2 is no 2).
        export_path: The weight file written at the end of fit; default: `classifier.pt` in the run folder (beside
            `checkpoints/`).
    """

    def __init__(
        self,
        classifier: str = "cifar_resnet20",
        num_classes: int = 10,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        crop_padding: int = 0,
        horizontal_flip: bool = False,
        export_path: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        if classifier not in CLASSIFIERS:
            raise ValueError(f"unknown classifier {classifier!r}; known: {', '.join(CLASSIFIERS)}")
        if optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
        self.classifier = build_classifier(classifier, None, num_classes, frozen=False)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self._run_dir: Path | None = None

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(images)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        if not batch["index"].numel():  # every image of the batch was unreadable (counted by the datamodule)
            return None
        hp = self.hparams
        logits = self(augment(batch["image"], hp.crop_padding, hp.horizontal_flip))
        loss = F.cross_entropy(logits, batch["label"])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"classifier loss became {loss.item()} at global step {self.global_step}")
        self.train_acc(logits, batch["label"])
        size = len(logits)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=size)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=size)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if not batch["index"].numel():
            return
        logits = self(batch["image"])
        self.val_acc(logits, batch["label"])
        size = len(logits)
        self.log("val/loss", F.cross_entropy(logits, batch["label"]), sync_dist=True, batch_size=size)
        self.log("val/acc", self.val_acc, prog_bar=True, batch_size=size)

    def configure_optimizers(self):
        hp = self.hparams
        params = self.classifier.parameters()
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay,
                                        nesterov=hp.momentum > 0)
        else:
            optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}

    def configure_callbacks(self):
        return resumable_checkpoints()  # last.ckpt + RNG states: an exact resume

    def on_fit_start(self) -> None:
        """Check the class count against the training set, before any work; find the run folder (every rank)."""
        classes = getattr(getattr(self.trainer.datamodule, "train_set", None), "classes", None)
        if classes is not None and len(classes) != self.hparams.num_classes:
            found = f"{len(classes)} classes ({', '.join(classes)})" if classes else "no class labels (a flat folder?)"
            raise ValueError(f"the training set has {found} but model.init_args.num_classes is "
                             f"{self.hparams.num_classes}")
        self._run_dir = Path(self.trainer.checkpoint_callback.dirpath).parent

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            self.export(self.hparams.export_path or self._run_dir / "classifier.pt")

    def export(self, path: str | Path) -> Path:
        """The network's state dict (no wrapper prefix), written whole or not at all."""
        path = Path(path)
        state = self.classifier.net.state_dict()
        atomic_write(path, lambda f: torch.save(state, f))
        return path
