"""Layers shared by the backbones: the (t, cond) embedder, adaLN-Zero blocks, latent tokens."""

from __future__ import annotations

import torch
from torch import nn

from perturbflow.nn._time import TimeEmbedding


def modulate(h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Shift and scale normalised activations (adaLN); a zero modulation leaves ``h`` unchanged."""
    return h * (1 + scale) + shift


def zero_linear(n_in: int, n_out: int) -> nn.Linear:
    """Linear layer with zero weight and bias: it outputs zero until trained."""
    layer = nn.Linear(n_in, n_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class ConditionEmbedder(nn.Module):
    """Embedding of the flow time and the condition into the vector that drives all modulations."""

    def __init__(self, n_cond: int, d_model: int):
        super().__init__()
        self.time = TimeEmbedding(d_model)
        self.cond = nn.Sequential(
            nn.Linear(n_cond, d_model), nn.SiLU(), nn.Linear(d_model, d_model)
        )

    def forward(self, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(self.time(t) + self.cond(cond))  # (B, d)


class AdaLNZeroBlock(nn.Module):
    """Pre-norm residual block (token mixer, then feed-forward MLP), each branch under adaLN-Zero.

    The conditioning vector gives a shift, a scale and a gate for each branch. The modulation
    is zero-initialised, so the gates are zero and the block starts as the identity. The
    ``mixer`` maps ``(N, L, d)`` to ``(N, L, d)`` and is the only part that differs between
    backbones.
    """

    def __init__(
        self, d_model: int, mixer: nn.Module, dropout_rate: float = 0.0, mlp_ratio: int = 4
    ):
        super().__init__()
        self.mixer = mixer
        self.norm1 = nn.LayerNorm(d_model, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(d_model, elementwise_affine=False)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model),
            nn.GELU(approximate="tanh"),
            nn.Dropout(dropout_rate),
            nn.Linear(mlp_ratio * d_model, d_model),
        )
        self.modulation = zero_linear(d_model, 6 * d_model)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # h: (N, L, d) tokens, c: (N, d) conditioning
        modulation = self.modulation(c).unsqueeze(1).chunk(6, dim=-1)  # (N, 1, d) each
        shift1, scale1, gate1, shift2, scale2, gate2 = modulation
        h = h + gate1 * self.mixer(modulate(self.norm1(h), shift1, scale1))  # (N, L, d)
        return h + gate2 * self.mlp(modulate(self.norm2(h), shift2, scale2))  # (N, L, d)


class FinalLayer(nn.Module):
    """adaLN followed by a zero-initialised projection, so a backbone's output starts at zero."""

    def __init__(self, d_model: int, n_out: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False)
        self.modulation = zero_linear(d_model, 2 * d_model)
        self.linear = zero_linear(d_model, n_out)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(c).unsqueeze(1).chunk(2, dim=-1)  # (N, 1, d)
        return self.linear(modulate(self.norm(h), shift, scale))  # (N, L, n_out)


class CoordinateTokens(nn.Module):
    """Tokens made of chunks of each cell's latent: ``chunk`` coordinates per token.

    Each chunk is projected to ``d_model`` and given a learned position embedding that names
    it, so the network can tell latent factors apart even though the mixing layers that
    follow treat all positions alike. A latent of D coordinates gives ``ceil(D / chunk)``
    tokens (the last chunk is zero-padded); :meth:`to_latent` maps per-token outputs back.
    With ``chunk=1`` every coordinate is a token.
    """

    def __init__(self, n_latent: int, d_model: int, chunk: int = 1):
        super().__init__()
        self.n_latent, self.chunk = n_latent, chunk
        self.n_tokens = -(-n_latent // chunk)
        self.value = nn.Linear(chunk, d_model)
        # unit scale, like the value term: a small init (ViT's 0.02) hides which chunk is which
        self.position = nn.Parameter(torch.randn(self.n_tokens, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, S, D); cells become independent sequences of L = ceil(D / chunk) tokens
        pad = self.n_tokens * self.chunk - self.n_latent
        x = nn.functional.pad(x, (0, pad)).reshape(-1, self.n_tokens, self.chunk)  # (B*S, L, chunk)
        return self.value(x) + self.position  # (B*S, L, d)

    def to_latent(self, out: torch.Tensor, n_sets: int, n_cells: int) -> torch.Tensor:
        """Per-token outputs ``(B*S, L, chunk)`` to velocities ``(B, S, D)``."""
        return out.reshape(n_sets, n_cells, -1)[..., : self.n_latent]
