"""LFDN as a LightningModule: train the feature denoiser, then score MSE, MFsim and LR in one pass.

The detector reads frozen-backbone features, not images (`inputs`): the DataModule serves them from its feature
cache (data/feature_cache.py), so the image -> feature step runs once and every epoch reads vectors.
Three copies of the denoiser live in the module: the trained weights, their EMA (used for scoring, as the
reference does), and the EMA frozen after the first epoch (the reference's checkpoint-0, needed by the LR
score). One checkpoint therefore carries everything evaluation needs, except a pretrained backbone, which the config
reloads from its file; it records the preprocessing the weights were trained on, and loading it under any other is
refused.
"""
from __future__ import annotations

import copy
import logging

import torch
from jsonargparse import lazy_instance
from torch import Tensor

from ood_lightning.backbones import MultiLayerFeatures, group_zscore
from ood_lightning.data.feature_cache import BatchInputs, FeatureInput
from ood_lightning.detectors.base import OODDetector
from ood_lightning.detectors.lfdn.checkpoint import load_official_checkpoint
from ood_lightning.detectors.lfdn.diffusion import LFDNSchedule, reconstruct, reconstruct_noise_count
from ood_lightning.detectors.lfdn.network import LFDN
from ood_lightning.detectors.lfdn.scores import mfsim_score, mse_score
from ood_lightning.ema import ema_update
from ood_lightning.errors import PreprocessingMismatchError, UntrainedWeightsError
from ood_lightning.noise import noise_keys, sample_integers, sample_noise
from ood_lightning.resume import resumable_checkpoints

# The checkpoint entry recording what the weights were trained on (LFDNDetector.preprocessing).
PREPROCESSING = "lfdn_preprocessing"
log = logging.getLogger(__name__)


class LFDNDetector(OODDetector):
    """Latent Feature Diffusion Network OOD detector (Yang et al., NeurIPS 2024).

    Defaults reproduce the released code's arithmetic and the paper's recipe (lr 1e-4); the network size
    follows the reference (hidden width 2x the feature size, 16 blocks).

    Scores: `mse` and `mfsim` (reconstruction error of the trained network's EMA), `mse_epoch0` / `mfsim_epoch0`
    (the same with the EMA frozen after the first epoch), `lr_mse` / `lr_mfsim` (first-epoch minus final, the
    released sign). Read `mse` first; LR only after long training (it inverts on briefly trained networks).

    Args:
        backbone: frozen multi-layer feature extractor (timm model, taps, weights file).
        hidden_dim: width of the residual MLP stream; default 2 x feature size (1440 for EfficientNet-B4).
        time_embed_dim: width of the time embedding; default the feature size (as the reference).
        num_blocks: residual blocks (16 in the paper).
        dropout: dropout inside the blocks (0 in the reference).
        lr: AdamW learning rate (paper 1e-4; the released code's default is 1e-5).
        weight_decay: AdamW weight decay on every parameter (released code: 0.02).
        ema_decay: EMA decay ceiling; the warm-up min(decay, (1+n)/(10+n)) is the reference's.
        num_timesteps: diffusion steps T.
        beta_start: first beta of the sqrt-linear schedule.
        beta_end: last beta of the sqrt-linear schedule.
        start_index: the diffusion index features are noised to before reconstruction (reference: 3).
        eta: DDIM stochasticity of the reconstruction (reference: 1).
        reconstruction: "reference" (the released code's shifted alpha tables) or "consistent" (our fix).
        mfsim_skip_first_group: the reference leaves the first layer out of MFsim; False includes it.
        seed: seed of the per-sample training and reconstruction noise (neither depends on batch size or GPU
            count).
        cache_dir: where the DataModule caches the backbone's features.
        official_checkpoints: score the released code's checkpoints instead of trained weights: the paths of
            its checkpoint-0.pth (first epoch, for LR) and checkpoint-last.pth.
        allow_untrained: score weights that were never trained (tests, debugging); otherwise testing without a
            trained checkpoint or official_checkpoints is refused, since its scores would be meaningless.
        allow_preprocessing_mismatch: load a checkpoint whose weights were trained on other features (image size,
            normalisation, backbone, taps, weights file) than this config gives; otherwise that is refused.
    """

    score_names = ("mse", "mfsim", "lr_mse", "lr_mfsim", "mse_epoch0", "mfsim_epoch0")
    file_options = {"official_checkpoints": ()}  # init arguments that name local files (see config_files.py)

    def __init__(
        self,
        backbone: MultiLayerFeatures = lazy_instance(MultiLayerFeatures),
        hidden_dim: int | None = None,
        time_embed_dim: int | None = None,
        num_blocks: int = 16,
        dropout: float = 0.0,
        lr: float = 1e-4,
        weight_decay: float = 0.02,
        ema_decay: float = 0.9999,
        num_timesteps: int = 100,
        beta_start: float = 0.0015,
        beta_end: float = 0.0195,
        start_index: int = 3,
        eta: float = 1.0,
        reconstruction: str = "reference",
        mfsim_skip_first_group: bool = True,
        seed: int = 0,
        cache_dir: str = ".cache/features",
        official_checkpoints: list[str] | None = None,
        allow_untrained: bool = False,
        allow_preprocessing_mismatch: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        if reconstruction not in ("reference", "consistent"):
            raise ValueError(f"reconstruction must be 'reference' or 'consistent', got {reconstruction!r}")
        self.backbone = backbone
        self.group_sizes = list(backbone.group_sizes)
        dim = backbone.feature_dim
        self.net = LFDN(dim, hidden_dim or 2 * dim, time_embed_dim or dim, num_blocks, dropout)
        self.ema = _frozen_copy(self.net)
        self.ema_first = _frozen_copy(self.net)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        # The EMA update count when ema_first was frozen: the released checkpoint-0.pth records it (see export.py).
        self.register_buffer("ema_first_updates", torch.zeros((), dtype=torch.long))
        self.schedule = LFDNSchedule(num_timesteps, beta_start, beta_end)
        self.features = FeatureInput(backbone, cache_dir)
        if official_checkpoints is not None:
            self._load_official(*official_checkpoints)

    def _load_official(self, first: str, last: str) -> None:
        """The released code's checkpoint-0 (EMA -> ema_first) and checkpoint-last (raw -> net, EMA -> ema)."""
        for target, path, ema, count in ((self.ema_first, first, True, self.ema_first_updates),
                                         (self.net, last, False, None), (self.ema, last, True, self.ema_updates)):
            loaded, info = load_official_checkpoint(path, ema=ema)
            target.load_state_dict(loaded.state_dict())
            if count is not None:
                count.fill_(info["ema_num_updates"] or 0)

    # -- data: cached backbone features, not images ------------------------------------------------------
    @property
    def inputs(self) -> BatchInputs:
        return BatchInputs(images=False, features=(self.features,))

    def on_test_start(self) -> None:
        # Here, after Lightning restored any --ckpt_path: only then is it known which weights get scored.
        self.require_trained()

    def on_predict_start(self) -> None:
        self.require_trained()

    def require_trained(self) -> None:
        """Refuse to score a network that was never trained (UntrainedWeightsError), unless allow_untrained."""
        trained = int(self.ema_updates) > 0 or self.hparams.official_checkpoints is not None
        if not (trained or self.hparams.allow_untrained):
            raise UntrainedWeightsError(
                "LFDNDetector has no trained weights to score (its EMA was never updated and no official checkpoints "
                "were loaded): the scores would be those of a random network. Give it trained weights with one of\n"
                "  --ckpt_path RUN/checkpoints/last.ckpt   (a checkpoint of a train.py run)\n"
                "  --ckpt_path last                        (the newest last.ckpt under trainer.default_root_dir)\n"
                "  --model.init_args.official_checkpoints '[checkpoint-0.pth, checkpoint-last.pth]'   (the released "
                "code's files)\n"
                "or set --model.init_args.allow_untrained true to score untrained weights on purpose.")

    def configure_callbacks(self):
        # last.ckpt for resuming; it also carries the first-epoch EMA that the LR score needs.
        return resumable_checkpoints()

    # -- checkpoints: what the weights were trained on, without the frozen backbone ----------------------
    def preprocessing(self) -> dict:
        """Everything the features depend on, under the config names a user would change (the data's only when a
        datamodule is attached)."""
        data = getattr(self._trainer and self._trainer.datamodule, "hparams", {})
        return {**{f"data.{key}": data[key] for key in ("image_size", "center_crop") if key in data},
                **{f"model.backbone.{key}": value for key, value in self.backbone.preprocessing().items()}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[PREPROCESSING] = self.preprocessing()
        if self.backbone.weights_path is not None:  # pretrained: the config reloads it (a random init is kept)
            checkpoint["state_dict"] = {key: value for key, value in checkpoint["state_dict"].items()
                                        if not key.startswith("backbone.")}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse weights trained on other features; then fill in the backbone (and the first epoch's EMA count of
        older checkpoints), so every other key loads strictly."""
        where = f"checkpoint {self._trainer.ckpt_path}" if self._trainer else "the checkpoint"
        trained = checkpoint.get(PREPROCESSING)
        if trained is None:
            log.warning("%s records no preprocessing (written before checkpoints recorded it): it cannot be checked "
                        "against this config's image size, normalisation and backbone", where)
        else:
            current = self.preprocessing()
            wrong = [f"  {key}: trained with {trained.get(key)!r}, this config has {value!r}"
                     for key, value in current.items() if trained.get(key) != value]
            if wrong and not self.hparams.allow_preprocessing_mismatch:
                raise PreprocessingMismatchError(
                    f"{where}: its LFDN weights were trained on other features than this config gives:\n"
                    + "\n".join(wrong) + "\nUse the config the weights were trained with (config.yaml of their run "
                    "folder), or set --model.init_args.allow_preprocessing_mismatch true to use them anyway.")
            if wrong:
                log.warning("%s: preprocessing differs from training (allow_preprocessing_mismatch):\n%s", where,
                            "\n".join(wrong))
        for key, value in self.backbone.state_dict(prefix="backbone.").items():
            checkpoint["state_dict"].setdefault(key, value)
        # Written before the first epoch's EMA count was kept: no score reads it (export.py refuses such a file).
        checkpoint["state_dict"].setdefault("ema_first_updates", torch.zeros((), dtype=torch.long))

    # -- compact export (prediction/export.py): the EMA networks that score, not the trained copy ----------
    def export_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        pretrained = self.backbone.weights_path is not None  # the config's weights file restores it
        return {key: value for key, value in state.items()
                if not key.startswith("net.") and not (pretrained and key.startswith("backbone."))}

    def import_state(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """The trained copy is not exported: `net` takes the EMA's weights (scoring never reads it)."""
        own = self.state_dict()
        whole = {key: own[key] for key in own if key.startswith("backbone.")}
        whole.update(state)
        whole.update({f"net.{key[len('ema.'):]}": value for key, value in state.items() if key.startswith("ema.")})
        return whole

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, **kwargs):
        """Lightning's, given the `backbone` (a checkpoint records its preprocessing, not how to build it). Scoring
        new images is simpler with ood_lightning.load_detector(run folder), which builds it from config.yaml."""
        if "backbone" not in kwargs:
            raise TypeError("LFDNDetector.load_from_checkpoint needs backbone=MultiLayerFeatures(...) as the run's "
                            "config.yaml gives it; or use ood_lightning.load_detector(run_folder), which reads it")
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location, hparams_file=hparams_file,
                                            strict=strict, **kwargs)

    # -- training --------------------------------------------------------------------------------------
    def configure_optimizers(self):
        return torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        # The reference updates the EMA inside forward, before this step's optimizer update.
        decay = self._update_ema()
        z = group_zscore(batch[self.features.key], self.group_sizes)
        t, noise = self.training_noise(batch["index"], z)
        loss = self.schedule.training_loss(self.net, z, t, noise)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"LFDN loss became {loss.item()} at global step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/ema_decay", decay)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def training_noise(self, index: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """Each training sample's timestep and noise, drawn from (seed, epoch, dataset index) alone.

        The reference draws both from the global generator. Per-sample draws have the same distribution but make
        training independent of batch size and process count (2 processes of batch B = 1 process of batch 2B, see
        the DataModule's training order) and of anything else that consumed global random numbers first.
        """
        stream = f"train/lfdn/epoch{self.current_epoch}"
        seed = self.hparams.seed
        t = sample_integers(self.schedule.num_timesteps, index, seed=seed, stream=f"{stream}/t", device=z.device)
        noise = sample_noise(z.shape[1:], index, seed=seed, stream=f"{stream}/noise", device=z.device, dtype=z.dtype)
        return t, noise

    def _update_ema(self) -> float:
        self.ema_updates += 1
        return ema_update(self.ema, self.net, int(self.ema_updates), self.hparams.ema_decay)

    def on_train_epoch_end(self) -> None:
        if self.current_epoch == 0:
            self.ema_first.load_state_dict(self.ema.state_dict())
            self.ema_first_updates.copy_(self.ema_updates)

    # -- scoring ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, net: LFDN, z: Tensor, index: Tensor, stream: str) -> Tensor:
        """`z` noised to start_index and denoised; the noise of row b is keyed by (seed, stream, index[b])."""
        noise = sample_noise(
            (reconstruct_noise_count(self.hparams.start_index), z.shape[1]),
            index,
            seed=self.hparams.seed,
            stream=stream,
            device=z.device,
        )
        return reconstruct(
            net, z, self.schedule, noise,
            start_index=self.hparams.start_index, eta=self.hparams.eta, variant=self.hparams.reconstruction,
        )

    def score(self, batch: dict, dataset: str) -> dict[str, Tensor]:
        z = group_zscore(batch[self.features.key], self.group_sizes)
        out = {}
        for tag, net in (("", self.ema), ("_epoch0", self.ema_first)):
            z_hat = self.reconstruct(net, z, noise_keys(batch), stream=f"{dataset}/lfdn{tag or '_last'}")
            out[f"mse{tag}"] = mse_score(z, z_hat)
            out[f"mfsim{tag}"] = mfsim_score(z, z_hat, self.group_sizes, self.hparams.mfsim_skip_first_group)
        out["lr_mse"] = out["mse_epoch0"] - out["mse"]
        out["lr_mfsim"] = out["mfsim_epoch0"] - out["mfsim"]
        return out


def _frozen_copy(net: torch.nn.Module) -> torch.nn.Module:
    copy_ = copy.deepcopy(net)
    copy_.requires_grad_(False)
    return copy_
