"""The LFDN denoiser: size, initial output, timestep embedding, block arithmetic."""
import math

import torch
from torch.nn import functional as F

from ood_lightning.detectors.lfdn.network import LFDN


def test_paper_size_parameter_count():
    with torch.device("meta"):  # shapes only: no 350 MB allocation
        model = LFDN(720, 1440, 720, 16)
    assert sum(p.numel() for p in model.parameters()) == 86_740_560


def test_default_time_embed_dim_is_in_dim():
    model = LFDN(in_dim=12, hidden_dim=20, num_blocks=1)
    assert model.time_embedding.linear_2.out_features == 12
    assert model.blocks[0].time_emb_proj.in_features == 12


def test_output_is_exactly_zero_at_init():
    torch.manual_seed(0)
    model = LFDN(in_dim=16, hidden_dim=32, num_blocks=3)
    out = model(torch.randn(4, 16), torch.tensor([0, 1, 50, 99]))
    assert out.shape == (4, 16)
    assert torch.equal(out, torch.zeros_like(out))


def test_timestep_embedding_is_cos_first_sinusoid():
    hidden = 1440
    t = torch.tensor([0, 1, 3, 57, 99])
    half = hidden // 2
    k = torch.arange(half, dtype=torch.float64)
    freqs = torch.exp(-math.log(10000.0) * k / half)  # f_k = exp(-ln(10000) k / half)
    arg = t[:, None].double() * freqs[None]
    expected = torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)
    with torch.device("meta"):
        model = LFDN(720, hidden, 720, 0)
    got = model.time_proj(t)
    assert got.shape == (5, hidden)
    torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=0)  # float32 sin/cos of args up to 99
    assert torch.equal(got[0, :half], torch.ones(half)) and torch.equal(got[0, half:], torch.zeros(half))


def test_forward_matches_hand_written_equations():
    torch.manual_seed(0)
    model = LFDN(in_dim=8, hidden_dim=16, time_embed_dim=6, num_blocks=2).double()
    for p in model.parameters():  # leave the zero init so every path is exercised
        torch.nn.init.normal_(p, std=0.3)
    x, t = torch.randn(3, 8, dtype=torch.float64), torch.tensor([0, 5, 99])

    def lin(layer, v):
        return v @ layer.weight.T + layer.bias

    def gn(norm, v):  # GroupNorm(1, C) on [B, C]: per-sample, biased variance, eps 1e-5, per-channel affine
        mu, var = v.mean(1, keepdim=True), v.var(1, unbiased=False, keepdim=True)
        return (v - mu) / torch.sqrt(var + 1e-5) * norm.weight + norm.bias

    half = 8
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    sinus = torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], 1)
    emb = lin(model.time_embedding.linear_2, F.silu(lin(model.time_embedding.linear_1, sinus)))
    h = lin(model.input_proj, F.silu(x))
    for b in model.blocks:
        r = lin(b.linear1, F.silu(gn(b.norm1, h))) + lin(b.time_emb_proj, F.silu(emb))
        h = h + lin(b.linear2, F.silu(gn(b.norm2, r)))
    expected = lin(model.proj_out, F.silu(gn(model.norm_out, h)))
    torch.testing.assert_close(model(x, t), expected, atol=1e-4, rtol=1e-4)  # sinusoid is float32


def test_scalar_timestep_broadcasts():
    torch.manual_seed(0)
    model = LFDN(in_dim=8, hidden_dim=16, num_blocks=1)
    torch.nn.init.normal_(model.proj_out.weight)
    x = torch.randn(3, 8)
    torch.testing.assert_close(model(x, 7), model(x, torch.full((3,), 7)))
