"""DiffGuard (ICCV 2023): zero-training OOD detection by re-synthesis with a pre-trained diffusion model."""
