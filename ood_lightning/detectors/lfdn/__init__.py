"""LFDN: latent feature diffusion network (Yang et al., NeurIPS 2024)."""

from ood_lightning.detectors.lfdn.module import LFDNDetector

__all__ = ["LFDNDetector"]
