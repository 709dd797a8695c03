"""Diffusion-based out-of-distribution detection on PyTorch Lightning."""
