"""A training run whose loss turns NaN stops with the step named, and its last good checkpoint stays intact."""
from __future__ import annotations

import lightning as L
import pytest
import torch

from ood_lightning.backbones import MultiLayerFeatures
from ood_lightning.data.datamodule import OODDataModule
from ood_lightning.detectors.lfdn import LFDNDetector
from ood_lightning.detectors.lfdn.diffusion import LFDNSchedule

NAN_STEP = 5  # 2 optimizer steps per epoch below: the loss breaks in the third epoch (epoch 2)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = LFDNDetector(MultiLayerFeatures("tf_efficientnet_lite0", weights=None), hidden_dim=32, num_blocks=1,
                         cache_dir=str(tmp_path / "cache"))
    real_loss = LFDNSchedule.training_loss

    def breaking_loss(self, *args, **kwargs):
        loss = real_loss(self, *args, **kwargs)
        return loss * float("nan") if model.global_step >= NAN_STEP else loss

    monkeypatch.setattr(LFDNSchedule, "training_loss", breaking_loss)
    dm = OODDataModule("digits", image_size=32, batch_size=32, train_subset=64, eval_subset=8)
    trainer = L.Trainer(accelerator="cpu", max_epochs=5, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(FloatingPointError, match=f"global step {NAN_STEP}"):
        trainer.fit(model, datamodule=dm)

    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]  # nothing half-written
    checkpoint = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (1, 4)  # the end of the last complete epoch
    state = checkpoint["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    restored = LFDNDetector(MultiLayerFeatures("tf_efficientnet_lite0", weights=None), hidden_dim=32, num_blocks=1,
                            cache_dir=str(tmp_path / "cache"))
    restored.load_state_dict(state)  # strict: the file is complete
    resumed = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path / "resumed")
    monkeypatch.setattr(LFDNSchedule, "training_loss", real_loss)
    resumed.fit(restored, datamodule=dm, ckpt_path=folder / "last.ckpt")  # the good checkpoint resumes
    assert resumed.global_step == 6
