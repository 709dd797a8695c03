"""Training the models DiffGuard protects and runs on, for data that comes without them: a class-conditional pixel
diffusion model (`diffusion.py`) and a small classifier-under-protection (`classifier.py`). Both are ordinary
LightningModules fitted by `python train.py --config configs/{diffusion,classifier}/<name>.yaml`; at the end of fit
each writes a file the DiffGuard configs load directly."""
