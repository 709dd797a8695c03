"""CompVis latent-diffusion cin256-v2 layout -> diffusers: parity with the original code's outputs, strict refusals."""
from __future__ import annotations

import argparse
import re

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from ood_lightning.detectors.diffguard.ldm.compvis_checkpoint import (
    CLASS_EMBEDDING_KEY,
    convert_ldm_state_dict,
    load_ldm_checkpoint,
    load_ldm_parts,
    main,
)
from ood_lightning.errors import StateDictMismatchError

TOL = 1e-4


@pytest.fixture(scope="module")
def ckpt_path(shared_dir):
    return shared_dir / "fixtures" / "ldm_cin.ckpt"


@pytest.fixture(scope="module")
def state(ckpt_path):
    return torch.load(ckpt_path, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def io(shared_dir):
    return torch.load(shared_dir / "fixtures" / "ldm_cin.io.pt")


@pytest.fixture(scope="module")
def parts(ckpt_path):
    return load_ldm_checkpoint(ckpt_path)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def outputs(parts, io) -> dict[str, torch.Tensor]:
    return {"latent_h": parts.vae.encode(io["image"]).latents,
            "decoded": parts.vae.decode(io["latent_h"]).sample,
            "eps": parts.eps(io["z"], io["t"], io["y"])}


def test_parity_with_original_outputs(parts, io):
    for name, ours in outputs(parts, io).items():
        diff = max_diff(ours, io[name])
        assert diff <= TOL, f"{name}: max abs diff {diff:.3g} > {TOL}"


def test_inferred_architecture(parts):
    unet, vae = parts.unet.config, parts.vae.config
    assert list(unet.block_out_channels) == [32, 64, 64] and unet.layers_per_block == 1
    assert list(unet.down_block_types) == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    assert list(unet.up_block_types) == ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    assert unet.cross_attention_dim == 24 and not unet.use_linear_projection
    # diffusers' attention_head_dim is a head count; cin256-v2's num_heads 1 means one head over all channels
    attentions = [m for m in parts.unet.modules() if isinstance(m, Attention)]
    assert attentions and all(m.heads == 1 and m.inner_dim == m.query_dim for m in attentions)
    assert list(vae.block_out_channels) == [32, 64, 64] and vae.layers_per_block == 1
    assert (vae.num_vq_embeddings, vae.vq_embed_dim, vae.latent_channels) == (64, 3, 3)
    assert vae.scaling_factor == 1.0 and vae.mid_block_add_attention
    assert not parts.unet.training and not any(p.requires_grad for p in parts.unet.parameters())
    assert all(p.dtype == torch.float32 for p in parts.vae.parameters())


def test_negative_controls_differ(parts, io):
    """Plausible mistakes move the outputs far beyond TOL, so the parity check can tell right from wrong."""
    with torch.no_grad():
        null = torch.full_like(io["y"], parts.null_class)
        controls = {
            "eps of the null class instead of y": max_diff(parts.eps(io["z"], io["t"], null), io["eps"]),
            "decode without quantising": max_diff(parts.vae.decode(io["latent_h"], force_not_quantize=True).sample,
                                                  io["decoded"]),
        }
        unflipped = UNet2DConditionModel.from_config({**parts.unet.config, "flip_sin_to_cos": False})
        unflipped.load_state_dict(parts.unet.state_dict())
        wrong = unflipped(io["z"], io["t"], encoder_hidden_states=parts.context(io["y"])).sample
        controls["timestep embedding [sin, cos]"] = max_diff(wrong, io["eps"])
    assert all(d > 100 * TOL for d in controls.values()), controls


def single_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over [B, N, d] tokens."""
    return torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1) @ v


def vq_attn_block(x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    """CompVis' AttnBlock (GroupNorm, 1x1-conv q/k/v, one head over all channels, proj_out, residual)."""
    h = F.group_norm(x, 32, w["norm.weight"], w["norm.bias"], eps=1e-6)
    q, k, v = (F.conv2d(h, w[f"{n}.weight"], w[f"{n}.bias"]).flatten(2).transpose(1, 2) for n in "qkv")
    out = single_head_attention(q, k, v).transpose(1, 2).reshape(x.shape)
    return x + F.conv2d(out, w["proj_out.weight"], w["proj_out.bias"])


def test_attention_mapping_with_sharp_attention(state):
    """The fixture's random attention is nearly uniform, so q/k mistakes barely move its outputs (~2e-5): sharpen
    q and k, then compare the converted attention layers with the original formulas written out by hand."""
    sharp = dict(state)
    for key in state:
        if re.search(r"(mid\.attn_1\.[qk]|attn1\.to_[qk])\.weight$", key):
            sharp[key] = state[key] * 8
    parts = convert_ldm_state_dict(sharp)
    torch.manual_seed(0)
    x = torch.randn(2, 64, 8, 8)
    prefix = "first_stage_model.encoder.mid.attn_1."
    weights = {k[len(prefix):]: v for k, v in sharp.items() if k.startswith(prefix)}
    transposed_q = {**weights, "q.weight": weights["q.weight"].transpose(0, 1)}
    tokens = torch.randn(2, 16, 64)
    block = "model.diffusion_model.middle_block.1.transformer_blocks.0.attn1."
    wq, wk, wv, wo, bo = (sharp[block + n] for n in ("to_q.weight", "to_k.weight", "to_v.weight",
                                                     "to_out.0.weight", "to_out.0.bias"))
    reference = single_head_attention(tokens @ wq.T, tokens @ wk.T, tokens @ wv.T) @ wo.T + bo
    two_heads = convert_ldm_state_dict(sharp, num_heads=2)
    with torch.no_grad():
        ours = parts.vae.encoder.mid_block.attentions[0](x)
        ours_attn1 = parts.unet.mid_block.attentions[0].transformer_blocks[0].attn1(tokens)
        two_heads_attn1 = two_heads.unet.mid_block.attentions[0].transformer_blocks[0].attn1(tokens)
    assert max_diff(ours, vq_attn_block(x, weights)) <= TOL
    assert max_diff(ours, vq_attn_block(x, transposed_q)) > 100 * TOL
    assert max_diff(ours_attn1, reference) <= TOL
    assert max_diff(two_heads_attn1, reference) > 100 * TOL


def test_class_embedding_and_context(parts, state):
    table = state[CLASS_EMBEDDING_KEY]
    assert parts.null_class == 10 == table.shape[0] - 1
    labels = torch.tensor([3, parts.null_class, 0])
    context = parts.context(labels)
    assert context.shape == (3, 1, 24)
    assert torch.equal(context[1, 0], table[-1]) and torch.equal(context[0, 0], table[3])


def test_to_moves_every_part(state, io):
    parts = convert_ldm_state_dict(state).to("cpu", torch.float64)
    assert {p.dtype for m in (parts.vae, parts.unet, parts.class_embedding) for p in m.parameters()} == {torch.float64}
    with torch.no_grad():
        eps = parts.eps(io["z"].double(), io["t"], io["y"])
    assert eps.dtype == torch.float64 and max_diff(eps, io["eps"].double()) <= TOL


def test_command_round_trip(ckpt_path, parts, io, tmp_path, capsys):
    out = tmp_path / "ldm-cin"
    main([str(ckpt_path), str(out)])
    summary = capsys.readouterr().out.strip()
    assert "\n" not in summary and str(out) in summary and "11 classes (null class 10)" in summary
    loaded = load_ldm_parts(out)
    assert loaded.null_class == parts.null_class
    before, after = outputs(parts, io), outputs(loaded, io)
    for name in ("eps", "decoded"):
        assert max_diff(after[name], before[name]) <= 1e-6, name
        assert max_diff(after[name], io[name]) <= TOL, name
    assert not loaded.unet.training and not any(p.requires_grad for p in loaded.vae.parameters())


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    example = "  python -m ood_lightning.detectors.diffguard.ldm.compvis_checkpoint checkpoints/"
    assert example in capsys.readouterr().out


def test_ignores_schedule_ema_and_loss_keys(state, io):
    extra = {**state, "betas": torch.zeros(1000), "model_ema.decay": torch.tensor(0.9999),
             "model_ema.diffusion_modelout2weight": torch.zeros(1),
             "first_stage_model.loss.discriminator.main.0.weight": torch.zeros(1)}
    parts = convert_ldm_state_dict(extra)
    with torch.no_grad():
        assert max_diff(parts.eps(io["z"], io["t"], io["y"]), io["eps"]) <= TOL


def test_refuses_wrong_shape_missing_and_unexpected_keys(state):
    bad = dict(state)
    wrong = "model.diffusion_model.output_blocks.3.0.skip_connection.weight"
    bad[wrong] = bad[wrong][:, :-1]
    missing = "first_stage_model.decoder.up.1.upsample.conv.bias"
    del bad[missing]
    unexpected = "model.diffusion_model.input_blocks.3.1.transformer_blocks.1.norm1.weight"
    bad[unexpected] = torch.zeros(64)
    bad["first_stage_model.quantize.used"] = torch.zeros(64)
    with pytest.raises(StateDictMismatchError) as info:  # a ValueError the entry points print without a traceback
        convert_ldm_state_dict(bad)
    message = str(info.value)
    assert f"wrong shape for {wrong}: expected (64, 96, 1, 1), got (64, 95, 1, 1)" in message
    assert f"missing {missing}" in message
    assert f"unexpected {unexpected}" in message and "unexpected first_stage_model.quantize.used" in message


def test_refuses_other_layouts(state):
    with pytest.raises(ValueError, match="not a CompVis latent-diffusion class-conditional checkpoint"):
        convert_ldm_state_dict({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)})
    no_vq = {k: v for k, v in state.items() if k != "first_stage_model.quantize.embedding.weight"}
    with pytest.raises(ValueError, match="first_stage_model.quantize.embedding.weight"):
        convert_ldm_state_dict(no_vq)
    wrong_dim = {**state, CLASS_EMBEDDING_KEY: torch.zeros(11, 25)}
    with pytest.raises(ValueError, match="match the UNet's context_dim"):
        convert_ldm_state_dict(wrong_dim)


def test_missing_files(tmp_path):
    path = tmp_path / "cin256-v2" / "model.ckpt"
    with pytest.raises(FileNotFoundError) as info:
        load_ldm_checkpoint(path)
    assert str(path) in str(info.value) and "cin256-v2" in str(info.value) and "checkpoints/" in str(info.value)
    with pytest.raises(FileNotFoundError, match="not a converted latent-diffusion folder"):
        load_ldm_parts(tmp_path)


def test_command_reports_errors_without_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "model.ckpt"), str(tmp_path / "out")])
    assert info.value.code == 1 and "error: latent-diffusion checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_refuses_pickled_objects(state, tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(ValueError, match="refusing to load"):
        load_ldm_checkpoint(path)
