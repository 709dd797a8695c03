"""The Grad-CAM mask of DiffGuard's "Distinct Semantic Guidance": where classifier-free guidance is applied.

Guidance toward the predicted label is restricted to the region the classifier bases that label on, so the
re-synthesis changes what the label is about and leaves the rest to the unconditional model. The region is the
Grad-CAM (Selvaraju et al. 2017) of the label's logit on the classifier's last convolutional block, computed by
pytorch-grad-cam: channel weights = spatial mean of the gradients, CAM = ReLU(sum of weighted activations),
bilinearly resized to the image.

Normalisation: the reference runs a forked pytorch-grad-cam with `norm_each=False` (no normalisation inside) and
then min-max normalises each image's CAM to [0, 1] (`scale_each`). Stock pytorch-grad-cam min-max normalises each
image before and after its resize; bilinear resizing commutes with an affine map of the values, so the result
is the reference's map. `minmax_per_image` is applied here anyway, so the cut means the same whatever the
library does inside. A CAM without any positive evidence (all zero) stays zero: nothing is guided.

Binarised at `cut` (> cut; a negative cut selects < |cut|, as the reference) and nearest-resized to the latent
grid, like the reference's `F.interpolate` of the 3-channel mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

from ood_lightning.classifiers import Classifier


def cam_target_layer(classifier: Classifier) -> nn.Module:
    """The module whose activations Grad-CAM weighs: the classifier's `cam_layer` (its registry entry's, or the one
    a timm / class_path spec names)."""
    return classifier.cam_layer


def minmax_per_image(cam: Tensor) -> Tensor:
    """Each map [B, H, W] shifted and scaled to [0, 1]; a flat map becomes all zero."""
    flat = cam.flatten(1)
    low, high = flat.min(1).values.view(-1, 1, 1), flat.max(1).values.view(-1, 1, 1)
    return (cam - low) / (high - low).clamp_min(torch.finfo(cam.dtype).tiny)


def binarize(cam: Tensor, cut: float) -> Tensor:
    """cam > cut, or cam < |cut| for a negative cut (guide where the classifier does not look)."""
    return cam > cut if cut >= 0 else cam < -cut


class GradCAMMask:
    """Binary guidance masks [B, 1, h, w] on the latent grid for images in [0, 1] and the labels guided toward.

    Needs autograd (the detector's Trainer runs with inference_mode false); gradients flow to a detached copy of
    the input only, the classifier's parameters stay frozen.
    """

    def __init__(self, classifier: Classifier, cut: float = 0.3):
        self.classifier, self.cut = classifier, float(cut)
        self.layer = cam_target_layer(classifier)

    def heatmap(self, images: Tensor, labels: Tensor) -> Tensor:
        """Grad-CAM of each image's label logit, min-max normalised per image: [B, H, W] float32 in [0, 1]."""
        # Built per call: pytorch-grad-cam fixes its device when constructed and leaves hooks until released.
        cam = GradCAM(model=self.classifier, target_layers=[self.layer])
        try:
            with torch.enable_grad():
                x = images.detach().float().requires_grad_()
                heat = cam(x, targets=[ClassifierOutputTarget(int(label)) for label in labels.tolist()])
        finally:
            cam.activations_and_grads.release()
        return minmax_per_image(torch.from_numpy(heat).float().to(images.device))

    def __call__(self, images: Tensor, labels: Tensor, latent_size: tuple[int, int]) -> Tensor:
        mask = binarize(self.heatmap(images, labels), self.cut)
        return F.interpolate(mask[:, None].float(), size=latent_size, mode="nearest") > 0.5
