"""LFDN: latent feature diffusion network (Yang et al., NeurIPS 2024)."""
