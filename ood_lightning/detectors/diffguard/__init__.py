"""DiffGuard (ICCV 2023): zero-training OOD detection by re-synthesis with a pre-trained diffusion model.

One package per pipeline: `gdm/` (classifier guidance on a pixel-space model) and `ldm/` (classifier-free guidance
inside a Grad-CAM mask on a latent model), each with its model loading, checkpoint converter, sampling and detector.
What both share stays here: the detector base (`detector.py`), the distances (`similarity.py`) and the loading of a
diffusers UNet2DModel folder (`pixel_unet.py`). The DDIM tables and update are `ood_lightning/ddim.py`.
"""
