"""The exponential moving average of weights that LFDN and the diffusion training configs sample and export.

The decay warms up as min(ceiling, (1 + n) / (10 + n)) after n updates, so a short run is not dominated by the
random initialisation. That is the rule of CompVis' LitEma (latent-diffusion), which the released LFDN code is built on
(see docs/lfdn.md (Network)).
"""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, updates: int, ceiling: float) -> float:
    """ema <- decay * ema + (1 - decay) * model for the `updates`-th update; returns the decay used."""
    decay = min(ceiling, (1 + updates) / (10 + updates))
    for average, weight in zip(ema.parameters(), model.parameters()):
        average.lerp_(weight, 1.0 - decay)
    return decay
