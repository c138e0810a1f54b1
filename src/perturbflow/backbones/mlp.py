"""FiLM-conditioned residual MLP on each cell's latent: the state-vector baseline."""

from __future__ import annotations

import torch
from torch import nn

from perturbflow.backbones._layers import ConditionEmbedder, modulate, zero_linear
from perturbflow.backbones._registry import register_backbone


class FiLMBlock(nn.Module):
    """Residual block whose normalised input is scaled, shifted and gated by the condition."""

    def __init__(self, d_model: int, d_cond: int, dropout_rate: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, elementwise_affine=False)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 2 * d_model),
            nn.SiLU(),
            nn.Dropout(dropout_rate),
            nn.Linear(2 * d_model, d_model),
        )
        self.modulation = zero_linear(d_cond, 3 * d_model)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(c).unsqueeze(1).chunk(3, dim=-1)  # (B, 1, d) each
        return h + gate * self.mlp(modulate(self.norm(h), shift, scale))  # (B, S, d)


@register_backbone("mlp")
class MLPBackbone(nn.Module):
    """FiLM-conditioned residual MLP applied to each cell independently (state-vector baseline).

    Tokens: none; each cell's latent is one vector and cells of a set do not interact
    (S is treated as a batch axis). The condition and the time modulate every block by FiLM;
    modulations are zero-initialised, so each block starts as the identity and the output
    layer (also zero-initialised) starts at zero.
    """

    def __init__(
        self,
        n_latent: int,
        n_cond: int,
        d_model: int = 256,
        depth: int = 4,
        dropout_rate: float = 0.0,
    ):
        super().__init__()
        self.embed = ConditionEmbedder(n_cond, d_model)
        self.inp = nn.Linear(n_latent, d_model)
        self.blocks = nn.ModuleList(FiLMBlock(d_model, d_model, dropout_rate) for _ in range(depth))
        self.out_norm = nn.LayerNorm(d_model, elementwise_affine=False)
        self.out = zero_linear(d_model, n_latent)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = self.embed(t, cond)  # (B, d)
        h = self.inp(x_t)  # (B, S, d)
        for block in self.blocks:
            h = block(h, c)  # (B, S, d)
        return self.out(self.out_norm(h))  # (B, S, D)
