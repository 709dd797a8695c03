"""openai guided-diffusion (ADM) checkpoints -> diffusers UNet2DModel: parity with the original's outputs,
a negative control showing the parity check bites, the command's round trip, and refusals."""
from __future__ import annotations

import json
import re

import pytest
import torch
from diffusers import UNet2DModel

from ood_lightning.detectors.diffguard.gdm.adm_checkpoint import (
    adm_unet_config,
    convert_adm_state_dict,
    load_adm_unet,
    main,
)
from ood_lightning.errors import StateDictMismatchError

TOL = 1e-4
HEADS = 16  # num_head_channels of the fixture (adm_uncond.json)


@pytest.fixture(scope="module")
def fixture(shared_dir):
    base = shared_dir / "fixtures" / "adm_uncond"
    state = torch.load(base.with_suffix(".ckpt"), weights_only=True)
    return base.with_suffix(".ckpt"), state, torch.load(base.with_suffix(".io.pt")), json.loads(
        base.with_suffix(".json").read_text())["config"]


def _max_diff(model: UNet2DModel, io: dict) -> float:
    with torch.no_grad():
        return (model(io["x"], io["t"]).sample - io["out"]).abs().max().item()


def _model(state: dict, config: dict, **kwargs) -> UNet2DModel:
    model = UNet2DModel(**config).eval()
    model.load_state_dict(convert_adm_state_dict(state, config, **kwargs), strict=True)
    return model


def test_parity_with_original_outputs(fixture):
    ckpt, _, io, original = fixture
    model = load_adm_unet(ckpt, num_head_channels=HEADS, image_size=original["image_size"])
    c = model.config
    assert list(c.block_out_channels) == [original["model_channels"] * m for m in original["channel_mult"]]
    assert c.layers_per_block == original["num_res_blocks"]
    attention = [lv for lv, kind in enumerate(c.down_block_types) if kind == "AttnDownBlock2D"]
    assert [2 ** lv for lv in attention] == original["attention_resolutions"]  # they are downsample rates
    assert [kind == "AttnUpBlock2D" for kind in reversed(c.up_block_types)] == [
        kind == "AttnDownBlock2D" for kind in c.down_block_types]
    assert (c.in_channels, c.out_channels, c.sample_size) == (3, original["out_channels"], original["image_size"])
    assert c.resnet_time_scale_shift == "scale_shift" and c.num_class_embeds is None and not model.training
    diff = _max_diff(model, io)
    assert diff <= TOL, f"max |diffusers - original| = {diff:.3g}"


def test_wrong_qkv_order_or_head_count_breaks_parity(fixture):
    """The parity check is meaningful: the usual conversion mistakes load without error and miss by far."""
    _, state, io, _ = fixture
    config = adm_unet_config(state, num_head_channels=HEADS)
    plain_chunk = _max_diff(_model(state, config, legacy_qkv_order=False), io)
    wrong_heads = _max_diff(_model(state, adm_unet_config(state, num_head_channels=2 * HEADS)), io)
    assert min(plain_chunk, wrong_heads) > 100 * TOL, (plain_chunk, wrong_heads)


def test_class_embedding_adds_to_the_time_embedding(fixture):
    _, state, io, _ = fixture
    labels = torch.randn(5, state["time_embed.2.weight"].shape[0])
    labels[3] = 0
    config = adm_unet_config(state | {"label_emb.weight": labels}, num_head_channels=HEADS)
    assert config["num_class_embeds"] == 5
    model = _model(state | {"label_emb.weight": labels}, config)
    with torch.no_grad():
        null = model(io["x"], io["t"], class_labels=torch.tensor([3, 3])).sample
        other = model(io["x"], io["t"], class_labels=torch.tensor([1, 1])).sample
    assert (null - io["out"]).abs().max() <= TOL and (other - io["out"]).abs().max() > 100 * TOL


def test_command_round_trip(fixture, tmp_path, capsys):
    ckpt, _, io, _ = fixture
    main([str(ckpt), str(tmp_path / "unet"), "--num_head_channels", str(HEADS), "--image_size", "32"])
    assert "parameters" in capsys.readouterr().out
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    diff = _max_diff(UNet2DModel.from_pretrained(tmp_path / "unet").eval(), io)
    assert diff <= TOL, f"max |saved diffusers - original| = {diff:.3g}"


def test_damaged_state_dict_is_refused_naming_the_keys(fixture, tmp_path):
    _, state, _, _ = fixture
    damaged = dict(state)
    del damaged["middle_block.1.proj_out.bias"]
    damaged["input_blocks.4.0.out_layers.3.weight"] = torch.zeros(64, 64, 1, 1)
    damaged["input_blocks.4.0.extra.weight"] = torch.zeros(1)
    torch.save(damaged, tmp_path / "damaged.pt")
    with pytest.raises(StateDictMismatchError) as err:  # a ValueError the entry points print without a traceback
        load_adm_unet(tmp_path / "damaged.pt", num_head_channels=HEADS)
    for expected in ("damaged.pt", "missing middle_block.1.proj_out.bias",
                     "wrong shape for input_blocks.4.0.out_layers.3.weight: expected (64, 64, 3, 3), "
                     "got (64, 64, 1, 1)",
                     "unexpected input_blocks.4.0.extra.weight"):
        assert expected in str(err.value)


@pytest.mark.parametrize("state, message", [
    ({"a.weight": torch.randn(3, 3), "b.bias": torch.randn(3)}, "not an openai guided-diffusion (ADM) UNet"),
    ({"conv_in.weight": torch.randn(8, 3, 3, 3)}, "diffusers UNet"),
    ({"model.diffusion_model.input_blocks.0.0.weight": torch.randn(8, 3, 3, 3)}, "latent-diffusion"),
    ({"state_dict": {"input_blocks.0.0.weight": torch.randn(8, 3, 3, 3)}}, "not a plain state dict"),
])
def test_non_adm_state_dicts_are_refused(state, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        adm_unet_config(state)


def test_head_width_must_divide_attention_widths(fixture):
    with pytest.raises(ValueError, match="num_head_channels=48 does not divide the attention widths"):
        adm_unet_config(fixture[1], num_head_channels=48)


def test_missing_file_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"256x256_diffusion_uncond.pt.*guided-diffusion.*checkpoints/") as err:
        load_adm_unet(tmp_path / "nope.pt")
    assert str(tmp_path / "nope.pt") in str(err.value)
