"""Set transformer over the cells of a set: induced-point attention, no positions, adaLN-Zero."""

from __future__ import annotations

import torch
from torch import nn

from perturbflow.backbones._layers import AdaLNZeroBlock, ConditionEmbedder, FinalLayer
from perturbflow.backbones._registry import register_backbone


class InducedSetAttention(nn.Module):
    """Induced set attention (ISAB, Lee et al. 2019): a learned summary that every cell reads.

    ``n_inducing`` learned points attend to the cells, then every cell attends to that summary:
    the cost is O(S m) rather than O(S^2), and with no positions involved, permuting the cells
    permutes the output the same way.
    """

    def __init__(self, d_model: int, n_heads: int, n_inducing: int, dropout_rate: float):
        super().__init__()
        # unit scale, like the layer-normalised cell tokens they attend to
        self.inducing = nn.Parameter(torch.randn(n_inducing, d_model))
        self.pool = nn.MultiheadAttention(d_model, n_heads, dropout_rate, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.broadcast = nn.MultiheadAttention(d_model, n_heads, dropout_rate, batch_first=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        inducing = self.inducing.expand(h.shape[0], -1, -1)  # (B, m, d)
        pooled = self.pool(inducing, h, h, need_weights=False)[0]  # (B, m, d)
        summary = self.norm(inducing + pooled)  # (B, m, d)
        return self.broadcast(h, summary, summary, need_weights=False)[0]  # (B, S, d)


@register_backbone("settransformer")
class SetTransformerBackbone(nn.Module):
    """Set transformer whose tokens are the cells of a set (permutation-equivariant over cells).

    Tokens: each of the S cells of a set is one token (its latent projected to ``d_model``),
    with no positional encoding, because the cells of a set have no order. Attention across
    cells lets the velocity of one cell depend on the rest of the population (e.g. to move a
    distribution, not only single cells); induced-point attention keeps it linear in S, and
    S = 1 reduces to a per-cell network. The embedding of (t, cond) modulates every block by
    adaLN-Zero; the modulation and the final projection are zero-initialised, so the output
    starts at zero.

    Parameters
    ----------
    n_latent
        Size D of the latent.
    n_cond
        Size C of the condition vector.
    d_model
        Width of the cell tokens.
    depth
        Number of induced set attention blocks.
    n_heads
        Number of attention heads (must divide ``d_model``).
    n_inducing
        Number of learned inducing points per block.
    dropout_rate
        Dropout in attention and MLPs.
    """

    def __init__(
        self,
        n_latent: int,
        n_cond: int,
        d_model: int = 64,
        depth: int = 4,
        n_heads: int = 4,
        n_inducing: int = 16,
        dropout_rate: float = 0.0,
    ):
        super().__init__()
        self.embed = ConditionEmbedder(n_cond, d_model)
        self.inp = nn.Linear(n_latent, d_model)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            mixer = InducedSetAttention(d_model, n_heads, n_inducing, dropout_rate)
            self.blocks.append(AdaLNZeroBlock(d_model, mixer, dropout_rate))
        self.final = FinalLayer(d_model, n_latent)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        c = self.embed(t, cond)  # (B, d)
        h = self.inp(x_t)  # (B, S, d)
        for block in self.blocks:
            h = block(h, c)  # (B, S, d)
        return self.final(h, c)  # (B, S, D)
