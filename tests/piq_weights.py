"""Weight files in the published layouts of DISTS and LPIPS (torchvision's vgg16-397923af.pth, piq's
dists_weights.pt and lpips_weights.pt), with random values, so tests exercise the offline loading path."""
from __future__ import annotations

from pathlib import Path

import torch
import torchvision

LPIPS_CHANNELS = (64, 128, 256, 512, 512)
DISTS_CHANNELS = 3 + sum(LPIPS_CHANNELS)  # the input itself is DISTS's first "layer"


def write_piq_weight_files(root: Path) -> dict[str, str]:
    """The three files under root (VGG16 in the legacy format of the real file); returns the config arguments."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])  # vgg16().features
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, root / "vgg16-397923af.pth",
               _use_new_zipfile_serialization=False)
    alpha, beta = torch.rand(2, 1, DISTS_CHANNELS, 1, 1, generator=gen)
    total = alpha.sum() + beta.sum()  # DISTS's weights sum to 1, so identical images score 0
    torch.save({"alpha": alpha / total, "beta": beta / total}, root / "dists_weights.pt")
    torch.save([torch.rand(1, c, 1, 1, generator=gen) for c in LPIPS_CHANNELS], root / "lpips_weights.pt")
    return {"vgg16_weights": str(root / "vgg16-397923af.pth"), "dists_weights": str(root / "dists_weights.pt"),
            "lpips_weights": str(root / "lpips_weights.pt")}
