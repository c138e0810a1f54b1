"""Sinusoidal embedding of the flow time t in [0, 1]."""

from __future__ import annotations

import math

import torch
from torch import nn


class TimeEmbedding(nn.Module):
    """Sinusoidal features of ``t`` followed by a small MLP (as in DiT's timestep embedder)."""

    def __init__(self, n_out: int, n_frequencies: int = 64, max_period: float = 1000.0):
        super().__init__()
        self.n_frequencies = n_frequencies
        self.max_period = max_period
        self.mlp = nn.Sequential(nn.Linear(n_frequencies, n_out), nn.SiLU(), nn.Linear(n_out, n_out))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.n_frequencies // 2
        freqs = torch.exp(
            -math.log(self.max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
        )
        args = (t.float() * 1000.0)[:, None] * freqs[None]  # (B, half)
        feats = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, F)
        return self.mlp(feats)  # (B, n_out)
