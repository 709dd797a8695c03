"""Each LFDN score type against its definition, unrolled by hand from the reference (lfdn-reference sections 4-5):
which network scores (the final EMA; the first-epoch EMA for *_epoch0; never the raw trained weights), the noise
level (index 3), eta 1, the released sign of LR and the mfsim_skip_first_group option.

The three networks get different random weights with a non-zero output layer, so scoring with the wrong one changes
every score. Noise is the per-sample noise of the documented streams, so the comparison is exact up to float32
rounding."""
from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from ood_lightning.backbones import MultiLayerFeatures
from ood_lightning.data.datamodule import OODDataModule
from ood_lightning.detectors.lfdn import LFDNDetector
from ood_lightning.noise import sample_noise

SEED = 0


def alpha_bar() -> list[float]:
    """The reference schedule (T = 100): betas = linspace(sqrt(0.0015), sqrt(0.0195), 100)^2, cumulative product."""
    betas = [(math.sqrt(0.0015) + k * (math.sqrt(0.0195) - math.sqrt(0.0015)) / 99) ** 2 for k in range(100)]
    return [math.prod(1 - b for b in betas[: k + 1]) for k in range(100)]


def group_zscore_by_hand(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """CustomGroupNorm: per sample and group, (x - mean) / (unbiased std + 1e-5)."""
    out, start = [], 0
    for n in sizes:
        g = x[:, start:start + n]
        out.append((g - g.mean(1, keepdim=True)) / (g.std(1, unbiased=True, keepdim=True) + 1e-5))
        start += n
    return torch.cat(out, 1)


@torch.no_grad()
def reference_reconstruction(net, z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The released sampler: noise z to index 3, then DDIM steps s = 3, 2, 1 with eta 1, the network told t = s but
    the update using the off-by-one tables a = ab[s-1], a' = ab[max(s-2, 0)]; the result is the last x."""
    ab = alpha_bar()
    x = math.sqrt(ab[3]) * z + math.sqrt(1 - ab[3]) * noise[:, 0]
    for i, s in enumerate((3, 2, 1)):
        x0_hat = net(x, torch.full((len(z),), s))
        eps = (x - math.sqrt(ab[s]) * x0_hat) / math.sqrt(1 - ab[s])
        a, a_prev = ab[s - 1], ab[max(s - 2, 0)]
        sigma = math.sqrt((1 - a_prev) / (1 - a)) * math.sqrt(max(1 - a / a_prev, 0.0))
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)) * eps + sigma * noise[:, 1 + i]
    return x


def mse_by_hand(z, z_hat):
    return ((z - z_hat) ** 2).sum(1)


def mfsim_by_hand(z, z_hat, sizes, skip_first):
    """Minus the mean per-layer cosine similarity, over layers 2..L (reference) or 1..L."""
    cos, start = [], 0
    for k, n in enumerate(sizes):
        if not (skip_first and k == 0):
            cos.append(F.cosine_similarity(z_hat[:, start:start + n], z[:, start:start + n], dim=1, eps=1e-8))
        start += n
    return -torch.stack(cos, 1).mean(1)


def detector(**kwargs) -> LFDNDetector:
    """A tiny LFDN whose raw, EMA and first-epoch EMA networks all hold different random weights."""
    torch.manual_seed(0)
    model = LFDNDetector(MultiLayerFeatures(weights=None), hidden_dim=32, num_blocks=2, seed=SEED, **kwargs)
    for k, net in enumerate((model.net, model.ema, model.ema_first)):
        g = torch.Generator().manual_seed(100 + k)
        for p in net.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3
    assert model.net.proj_out.weight.abs().sum() > 0
    return model


def batch_of(model: LFDNDetector, n: int = 5) -> dict:
    g = torch.Generator().manual_seed(7)
    return {model.features.key: torch.randn(n, model.backbone.feature_dim, generator=g) * 2 + 0.5,
            "index": torch.arange(n) + 11}


def by_hand(model: LFDNDetector, batch: dict, net, stream: str, skip_first: bool = True) -> dict:
    """MSE and MFsim of one network, noise drawn per sample from (seed, stream, index): 1 + 3 draws per sample."""
    sizes = model.group_sizes
    z = group_zscore_by_hand(batch[model.features.key], sizes)
    noise = sample_noise((4, z.shape[1]), batch["index"], seed=SEED, stream=stream)
    z_hat = reference_reconstruction(net, z, noise)
    return {"mse": mse_by_hand(z, z_hat), "mfsim": mfsim_by_hand(z, z_hat, sizes, skip_first)}


def assert_close(got, expected, what):
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4, msg=lambda m: f"{what}: {m}")


def test_every_score_type_is_its_definition_with_the_named_weights():
    """mse/mfsim: final EMA; *_epoch0: first-epoch EMA; lr_* = epoch0 - final (released sign: higher = OOD)."""
    model = detector()
    batch = batch_of(model)
    scores = model.score(batch, "cifar10")
    last = by_hand(model, batch, model.ema, "cifar10/lfdn_last")
    first = by_hand(model, batch, model.ema_first, "cifar10/lfdn_epoch0")
    expected = {"mse": last["mse"], "mfsim": last["mfsim"], "mse_epoch0": first["mse"],
                "mfsim_epoch0": first["mfsim"], "lr_mse": first["mse"] - last["mse"],
                "lr_mfsim": first["mfsim"] - last["mfsim"]}
    assert set(scores) == set(expected) == set(LFDNDetector.score_names)
    for name, value in expected.items():
        assert_close(scores[name], value, name)

    # the test can tell the networks and the noise level apart: each alternative moves every score
    raw = by_hand(model, batch, model.net, "cifar10/lfdn_last")
    assert ((raw["mse"] - last["mse"]).abs() > 1e-3 * last["mse"]).all()
    assert ((raw["mfsim"] - last["mfsim"]).abs() > 1e-3).all()
    assert ((first["mfsim"] - last["mfsim"]).abs() > 1e-3).all()


def test_the_noise_level_is_index_3_and_eta_is_1():
    """start_index 4 or a deterministic sampler (eta 0) are other scores: the defaults must be the reference's."""
    model = detector()
    assert (model.hparams.start_index, model.hparams.eta, model.hparams.reconstruction) == (3, 1.0, "reference")
    batch = batch_of(model)
    deeper = detector(start_index=4).score(batch, "cifar10")["mse"]
    default = model.score(batch, "cifar10")["mse"]
    assert ((deeper - default).abs() > 1e-3 * default).all()


@pytest.mark.parametrize("skip_first", [True, False])
def test_mfsim_skip_first_group_reaches_the_score(skip_first):
    model = detector(mfsim_skip_first_group=skip_first)
    batch = batch_of(model)
    scores = model.score(batch, "id")
    last = by_hand(model, batch, model.ema, "id/lfdn_last", skip_first)
    first = by_hand(model, batch, model.ema_first, "id/lfdn_epoch0", skip_first)
    assert_close(scores["mfsim"], last["mfsim"], "mfsim")
    assert_close(scores["lr_mfsim"], first["mfsim"] - last["mfsim"], "lr_mfsim")
    other = by_hand(model, batch, model.ema, "id/lfdn_last", not skip_first)
    assert ((other["mfsim"] - last["mfsim"]).abs() > 1e-3).all()  # the option changes the number


class RecordEMA(L.Callback):
    def __init__(self):
        self.after_epoch = []

    def on_train_epoch_end(self, trainer, module):
        self.after_epoch.append({k: v.clone() for k, v in module.ema.state_dict().items()})


def test_epoch0_weights_are_the_ema_after_the_first_epoch(tmp_path):
    """The reference's checkpoint-0 holds the EMA after epoch 0; later epochs must not overwrite it."""
    torch.manual_seed(0)
    model = LFDNDetector(MultiLayerFeatures(weights=None), hidden_dim=16, num_blocks=1, lr=1e-2,
                         cache_dir=str(tmp_path / "cache"))
    dm = OODDataModule("digits", image_size=32, batch_size=8, train_subset=16, eval_subset=4)
    record = RecordEMA()
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[record],
                        default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    first, last = record.after_epoch[0], record.after_epoch[-1]
    assert len(record.after_epoch) == 3
    for key, value in model.ema_first.state_dict().items():
        torch.testing.assert_close(value, first[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(first[k], last[k]) for k in first)  # epochs 1-2 moved the EMA on
