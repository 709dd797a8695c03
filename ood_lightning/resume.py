"""Checkpoints a killed training run resumes from exactly: `last.ckpt` plus the random number generators' states.

Lightning's checkpoint holds the model, optimizer, scheduler, loops and callbacks, but not the global RNGs, which
draw the diffusion and classifier trainings' noise, timesteps, label dropout and augmentations (LFDN's training
noise and every training order are seeded per sample and epoch and need no restoring). Restoring them with the
checkpoint makes a run restarted with `--ckpt_path last` after a crash (even SIGKILL mid-epoch: it repeats that epoch
from its start) end at the same weights as one never interrupted. The states are stored as plain tensors and ints, which
`torch.load(weights_only=True)` reads.
"""
from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint


class RNGStateCheckpoint(Callback):
    """Saves the torch (CPU and CUDA), numpy and Python RNG states in every checkpoint and restores them on resume."""

    def state_dict(self) -> dict:
        kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
            "python": random.getstate(),
        }

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        numpy_state = state["numpy"]
        np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                             numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
        random.setstate(state["python"])


def resumable_checkpoints() -> list[L.Callback]:
    """The callbacks of every training module: `last.ckpt` after each epoch, with the RNG states in it, and no other
    file: with no metric to rank epochs by, the newest checkpoint is the one kept (save_top_k=1) and it is named last
    (save_last=True would write a second, identical copy beside it)."""
    return [ModelCheckpoint(filename="last", enable_version_counter=False), RNGStateCheckpoint()]
