"""Classifier guidance with DiffGuard's "Clean Grad" (paper eqs. 7-8): what pulls a re-synthesis toward a label.

At respaced index k, with fac = sqrt(1 - alpha-bar_k), the classifier looks at the blend

    x_in = fac * x0_raw + (1 - fac) * x_t        (mostly the clean estimate at high noise, x_t at low noise)

through random cutouts, and the guidance is g = scale * d/dx_in sum_crops log p(y | crop). The gradient stops
at the blend: it never flows back through the diffusion model (the blend is detached), and it is then used as if
it were the gradient at x_t, as in the reference. `guided_eps` turns it into the epsilon of Dhariwal & Nichol's
Algorithm 2: eps_hat = eps - fac * g (the paper's eq. 4 prints "+"; the code's "-" is right for epsilon space).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Cutouts:
    """Random square crops resized to the classifier's input size (nearest, as F.interpolate's default).

    Each crop's side is floor(U * (side - cut_size) + cut_size), then a uniform offset. The crop geometry of
    a sample's j-th guided step is the j-th draw of one generator seeded with `seed`, the same sequence for every
    sample (the reference resets its generator before each image), so a sample's crops depend on neither the
    batch nor its neighbours. With `count` 0 the classifier sees the whole image.
    """

    def __init__(self, count: int = 8, cut_size: int = 224, seed: int = 100):
        self.count, self.cut_size, self.seed = int(count), int(cut_size), int(seed)
        self._geometry: list[list[tuple[int, int, int]]] = []
        self._generator: torch.Generator | None = None
        self._side: int | None = None

    def geometry(self, step: int, side: int) -> list[tuple[int, int, int]]:
        """(size, top, left) of each crop at a sample's `step`-th guided step, on a square image of `side`."""
        if side != self._side:
            self._side, self._geometry = side, []
            self._generator = torch.Generator().manual_seed(self.seed)
        low = min(side, self.cut_size)
        while len(self._geometry) <= step:
            crops = []
            for _ in range(self.count):
                size = int(torch.rand([], generator=self._generator) * (side - low) + low)
                left = int(torch.randint(0, side - size + 1, (), generator=self._generator))
                top = int(torch.randint(0, side - size + 1, (), generator=self._generator))
                crops.append((size, top, left))
            self._geometry.append(crops)
        return self._geometry[step]

    def __call__(self, images: Tensor, steps: Tensor) -> tuple[Tensor, Tensor]:
        """Crops of images [B, C, S, S] whose per-sample guided step counts are `steps` [B].

        Returns the crops [B * count, C, cut, cut] and, for each crop, the row of the image it came from."""
        if self.count <= 0:
            return images, torch.arange(len(images), device=images.device)
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"cutouts need square images, got {tuple(images.shape[-2:])}")
        crops, owners = [], []
        for step in steps.unique().tolist():
            rows = (steps == step).nonzero().squeeze(1)
            for size, top, left in self.geometry(step, images.shape[-1]):
                crop = images[rows, :, top:top + size, left:left + size]
                crops.append(F.interpolate(crop, size=(self.cut_size, self.cut_size), mode="nearest"))
                owners.append(rows)
        return torch.cat(crops), torch.cat(owners)


class CleanGradGuidance:
    """g = scale * grad of sum log p(label | cutouts of the blend), per sample; rows not to be guided get g = 0.

    Args:
        classifier: Maps [N, 3, h, w] images in [0, 1] to logits (normalisation inside).
        scale: The guidance scale s (released: 3). The loss is a sum over crops, so the pull grows with `cutouts`.
        cutouts: Crop augmentation (eq. 8); Cutouts(count=0) for none (ablation "only w/ x0").
        use_x0: Blend with the clean estimate (eq. 7); False differentiates at x_t (ablation `no_x0_hat`).
    """

    def __init__(self, classifier: nn.Module, scale: float = 3.0, cutouts: Cutouts | None = None,
                 use_x0: bool = True):
        self.classifier, self.scale = classifier, float(scale)
        self.cutouts = cutouts or Cutouts(count=0)
        self.use_x0 = use_x0

    def __call__(self, x_t: Tensor, x0_raw: Tensor, alpha_bar: float, labels: Tensor, steps: Tensor,
                 guided: Tensor | None = None) -> Tensor:
        """The guidance g for latents x_t [B, C, S, S] in [-1, 1] scale, their unclipped x0 estimates, target
        labels [B] and each sample's guided step count (which selects its crops). `guided` [B] (bool) says which
        rows are guided (None: all); the others, e.g. the unguided twin, get g = 0 and cost no classifier pass."""
        g = torch.zeros_like(x_t)
        guided = torch.arange(len(x_t), device=x_t.device) if guided is None else guided.nonzero().squeeze(1)
        if not len(guided):
            return g
        fac = math.sqrt(1.0 - alpha_bar)
        blend = fac * x0_raw[guided] + (1.0 - fac) * x_t[guided] if self.use_x0 else x_t[guided]
        x_in = blend.detach().float().requires_grad_()
        with torch.enable_grad():
            crops, owner = self.cutouts((x_in + 1.0) / 2.0, steps[guided])
            log_p = torch.log_softmax(self.classifier(crops).float(), dim=-1)
            loss = log_p[torch.arange(len(crops), device=crops.device), labels[guided][owner]].sum()
            (grad,) = torch.autograd.grad(loss, x_in)
        g[guided] = self.scale * grad.to(g.dtype)
        return g


def guided_eps(eps: Tensor, g: Tensor, alpha_bar: float) -> Tensor:
    """Classifier guidance in epsilon space: eps_hat = eps - sqrt(1 - alpha-bar) * g."""
    return eps - math.sqrt(1.0 - alpha_bar) * g
