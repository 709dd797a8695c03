"""Official LFDN checkpoint layout: parity with the original code's outputs, round trip, strict errors."""
import argparse
import pathlib

import lightning as L
import pytest
import torch

from ood_lightning.backbones import MultiLayerFeatures
from ood_lightning.data.datamodule import OODDataModule
from ood_lightning.detectors.lfdn import LFDNDetector
from ood_lightning.detectors.lfdn.checkpoint import (
    ema_key,
    load_official_checkpoint,
    official_name,
    official_state_to_ours,
    ours_to_official_state,
    save_official_checkpoint,
)
from ood_lightning.detectors.lfdn.export import export
from ood_lightning.detectors.lfdn.network import LFDN
from ood_lightning.errors import UserFixableError


def _load_raw(path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def fixture_paths(shared_dir):
    base = shared_dir / "fixtures" / "lfdn_official"
    return base.with_suffix(".ckpt"), base.with_suffix(".io.pt")


@pytest.mark.parametrize("ema", [False, True])
def test_parity_with_official_outputs(fixture_paths, ema):
    ckpt, io_path = fixture_paths
    io = torch.load(io_path)
    model, info = load_official_checkpoint(ckpt, ema=ema)
    assert info["config"] == dict(in_dim=32, hidden_dim=64, time_embed_dim=32, num_blocks=2)
    assert info["weights"] == ("ema" if ema else "raw") and info["epoch"] == 0
    assert info["args"] == {"batch_size": 256, "lr": 1e-05, "epochs": 150}
    assert info["ema_num_updates"] == 196 and info["ema_decay"] == pytest.approx(0.9999)
    with torch.no_grad():
        out = model(io["x"], io["t"])
    expected = io["out_ema" if ema else "out_raw"]
    assert (out - expected).abs().max().item() <= 1e-5


def test_name_mapping_covers_the_official_keys(fixture_paths):
    state = _load_raw(fixture_paths[0])["model"]
    model = LFDN(32, 64, 32, 2)
    mapped = {"model.diffusion_model." + official_name(k) for k in model.state_dict()}
    mapped |= {ema_key(k) for k in model.state_dict()} | {"model_ema.decay", "model_ema.num_updates"}
    assert mapped == set(state)
    assert ema_key("input_proj.weight") == "model_ema.diffusion_modelinput_proj1weight"


def random_lfdn(seed):
    torch.manual_seed(seed)
    model = LFDN(in_dim=10, hidden_dim=14, time_embed_dim=6, num_blocks=3)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return model


def test_round_trip(tmp_path):
    raw, ema = random_lfdn(0), random_lfdn(1)
    path = tmp_path / "sub" / "checkpoint-7.pth"
    save_official_checkpoint(path, raw, ema, epoch=7, num_updates=1234, args={"lr": 1e-4})
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint-7.pth"]  # no temporary file left
    x, t = torch.randn(4, 10), torch.tensor([0, 3, 50, 99])
    for use_ema, ref in ((False, raw), (True, ema)):
        model, info = load_official_checkpoint(path, ema=use_ema)
        assert info["epoch"] == 7 and info["ema_num_updates"] == 1234 and info["args"] == {"lr": 1e-4}
        assert info["config"] == dict(in_dim=10, hidden_dim=14, time_embed_dim=6, num_blocks=3)
        with torch.no_grad():
            assert torch.equal(model(x, t), ref(x, t))
    ckpt = _load_raw(path)
    assert ckpt["model_ema"] is None and isinstance(ckpt["args"], argparse.Namespace)
    assert ckpt["model"]["model_ema.num_updates"].dtype == torch.int32


def test_state_conversion_round_trip():
    raw, ema = random_lfdn(0).state_dict(), random_lfdn(1).state_dict()
    back_raw, back_ema = official_state_to_ours(ours_to_official_state(raw, ema, num_updates=5))
    assert back_raw.keys() == raw.keys() and all(torch.equal(back_raw[k], raw[k]) for k in raw)
    assert all(torch.equal(back_ema[k], ema[k]) for k in ema)


def _official(**changes):
    state = ours_to_official_state(random_lfdn(0).state_dict(), random_lfdn(1).state_dict(), num_updates=5)
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    return state


def test_wrong_shape_is_a_value_error_naming_the_key(tmp_path):
    key = "model.diffusion_model.res_blocks.1.in_layers.2.weight"
    path = tmp_path / "bad.pth"
    torch.save({"model": _official(**{key: torch.zeros(14, 13)}), "model_ema": None, "epoch": 0,
                "args": argparse.Namespace()}, path)
    with pytest.raises(ValueError, match=r"res_blocks\.1\.in_layers\.2\.weight") as err:
        load_official_checkpoint(path)
    assert str(path) in str(err.value) and "(14, 14)" in str(err.value)
    assert isinstance(err.value, UserFixableError), "train.py / evaluate.py print it without a traceback"


def test_missing_and_unexpected_keys_are_listed():
    state = _official(**{"model_ema.diffusion_modelout2bias": None,
                         "model.diffusion_model.extra.weight": torch.zeros(1)})
    state["pretrained_encoder.backbone.conv.weight"] = torch.zeros(1)  # non-denoiser keys are ignored
    with pytest.raises(ValueError) as err:
        official_state_to_ours(state)
    assert "missing model_ema.diffusion_modelout2bias" in str(err.value)
    assert "unexpected model.diffusion_model.extra.weight" in str(err.value)
    assert "pretrained_encoder" not in str(err.value)


def test_non_finite_weights_are_refused():
    bad = torch.full((10, 14), float("nan"))
    with pytest.raises(ValueError, match="non-finite values in model.diffusion_model.out.2.weight"):
        official_state_to_ours(_official(**{"model.diffusion_model.out.2.weight": bad}))


def test_missing_ema_and_missing_file(tmp_path):
    state = {k: v for k, v in _official().items() if not k.startswith("model_ema.")}
    path = tmp_path / "raw_only.pth"
    torch.save({"model": state, "model_ema": None, "epoch": 0, "args": argparse.Namespace()}, path)
    with pytest.raises(ValueError, match="no EMA weights"):
        load_official_checkpoint(path)
    model, info = load_official_checkpoint(path, ema=False)
    assert info["ema_num_updates"] is None
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_official_checkpoint(tmp_path / "nothere.pth")


def test_other_pickled_globals_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": _official(), "model_ema": None, "epoch": 0,
                "args": argparse.Namespace(out=pathlib.PurePosixPath("/x"))}, path)
    with pytest.raises(ValueError, match="refusing to load .*evil.pth"):
        load_official_checkpoint(path)


def test_export_records_each_file_s_own_ema_update_count(tmp_path):
    """checkpoint-0.pth holds the EMA after the first epoch, so it carries the update count of that moment."""
    model = LFDNDetector(MultiLayerFeatures("tf_efficientnet_lite0", weights=None), hidden_dim=16, num_blocks=1,
                         cache_dir=str(tmp_path / "cache"))
    if "ema_first_updates" not in model.state_dict():
        pytest.skip("LFDNDetector does not store the EMA update count after the first epoch yet (a buffer "
                    "'ema_first_updates', set from ema_updates at the end of epoch 0 and from checkpoint-0's count "
                    "when official checkpoints are loaded)")
    dm = OODDataModule("digits", image_size=32, batch_size=16, train_subset=32, eval_subset=4)  # 2 steps per epoch
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    (last,) = tmp_path.rglob("last.ckpt")
    first, final = export(str(last), str(tmp_path / "official"))
    assert load_official_checkpoint(first)[1]["ema_num_updates"] == 2
    assert load_official_checkpoint(final)[1]["ema_num_updates"] == 6
