"""The LFDN denoiser: a residual MLP that predicts x0 from a noisy feature vector x_t and a timestep t.

Architecture as in the official code (xbyym/DLSR, ``latent.py``; see docs/lfdn.md (Network))::

    h   = Linear(in -> hidden)(SiLU(x_t))                                  input_proj
    emb = MLP(sinusoid_cos_first(t, dim=hidden))   hidden -> temb -> temb  time_embedding
    num_blocks x   h = h + LFDNBlock(h, emb)
    x0  = ZeroLinear(hidden -> in)(SiLU(GroupNorm(1, hidden)(h)))          norm_out, proj_out

``GroupNorm(1, C)`` on a [B, C] tensor normalises each sample over its C features (it equals a LayerNorm).
The last Linear of every block and the output Linear start at zero, so an untrained LFDN outputs exactly 0.
Parameter names here are our own; ``checkpoint.py`` maps them to and from the official layout.
"""
from __future__ import annotations

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import Tensor, nn
from torch.nn import functional as F


def zero_linear(in_features: int, out_features: int) -> nn.Linear:
    """A Linear layer whose weight and bias start at zero (the official ``zero_module(nn.Linear(...))``)."""
    layer = nn.Linear(in_features, out_features)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class LFDNBlock(nn.Module):
    """x + Linear0(Dropout(SiLU(GN(Linear(SiLU(GN(x))) + Linear(SiLU(emb)))))) with additive time conditioning."""

    def __init__(self, channels: int, emb_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(1, channels)
        self.linear1 = nn.Linear(channels, channels)
        self.time_emb_proj = nn.Linear(emb_channels, channels)
        self.norm2 = nn.GroupNorm(1, channels)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = zero_linear(channels, channels)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.linear1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(emb))
        h = self.linear2(self.dropout(F.silu(self.norm2(h))))
        return x + h


class LFDN(nn.Module):
    """Latent Feature Diffusion Network. Paper size: ``LFDN(720, 1440, 720, 16)``, 86,740,560 parameters.

    Args:
        in_dim: feature-vector size (input and output; 720 for the EfficientNet-b4 taps).
        hidden_dim: residual-stream width; also the size of the sinusoidal timestep embedding.
        time_embed_dim: output width of the time MLP (default ``in_dim``, as in the official config).
        num_blocks: number of residual blocks.
        dropout: dropout inside each block (official: 0).
    """

    def __init__(
        self,
        in_dim: int = 720,
        hidden_dim: int = 1440,
        time_embed_dim: int | None = None,
        num_blocks: int = 16,
        dropout: float = 0.0,
    ):
        super().__init__()
        time_embed_dim = in_dim if time_embed_dim is None else time_embed_dim
        if hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even (it is the sinusoid size), got {hidden_dim}")
        self.config = dict(in_dim=in_dim, hidden_dim=hidden_dim, time_embed_dim=time_embed_dim,
                           num_blocks=num_blocks, dropout=dropout)
        self.input_proj = nn.Linear(in_dim, hidden_dim)
        # [cos(t f_k), sin(t f_k)], f_k = exp(-ln(10000) k / (hidden_dim/2)), k = 0..hidden_dim/2-1
        self.time_proj = Timesteps(hidden_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(hidden_dim, time_embed_dim, act_fn="silu")  # Linear-SiLU-Linear
        self.blocks = nn.ModuleList(LFDNBlock(hidden_dim, time_embed_dim, dropout) for _ in range(num_blocks))
        self.norm_out = nn.GroupNorm(1, hidden_dim)
        self.proj_out = zero_linear(hidden_dim, in_dim)

    def forward(self, x: Tensor, t: Tensor | int) -> Tensor:
        """x: [B, in_dim] noisy features, t: [B] (or scalar) 0-based integer timesteps -> predicted x0 [B, in_dim]."""
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        emb = self.time_embedding(self.time_proj(t).to(x.dtype))
        h = self.input_proj(F.silu(x))
        for block in self.blocks:
            h = block(h, emb)
        return self.proj_out(F.silu(self.norm_out(h)))
