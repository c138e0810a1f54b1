"""Embeddings of a perturbation (a set of atoms) and of a context (its own control cells)."""

from __future__ import annotations

import torch
from torch import nn


class PerturbationEncoder(nn.Module):
    """Deep-sets encoder of a set of atoms: ``rho(pool_a phi(a))``.

    Pooling the atom embeddings makes the encoding permutation-invariant, and an unseen
    combination of seen atoms is encoded from its parts. ``"mean"`` pooling (with the number
    of atoms as an extra feature) keeps a combination's embedding inside the hull of the
    embeddings seen in training, so the network interpolates instead of extrapolating;
    ``"sum"`` adds them. Atom index 0 is padding.
    """

    def __init__(self, n_atoms: int, n_embed: int = 64, pooling: str = "mean"):
        super().__init__()
        self.pooling = pooling
        self.embedding = nn.Embedding(n_atoms + 1, n_embed, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.5)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.rho = nn.Sequential(nn.Linear(n_embed + 1, n_embed), nn.SiLU(), nn.Linear(n_embed, n_embed))

    def forward(self, atoms: torch.Tensor) -> torch.Tensor:
        n = (atoms > 0).sum(dim=1, keepdim=True).float()  # (B, 1)
        pooled = self.embedding(atoms).sum(dim=1)  # (B, A, E) -> (B, E)
        if self.pooling == "mean":
            pooled = pooled / n.clamp(min=1)
        return pooled + self.rho(torch.cat([pooled, n], dim=-1))  # (B, E)


class ContextEncoder(nn.Module):
    """Encodes a context from the mean and spread of its control cells' latents.

    A context is described by its own control cells, so a context never seen perturbed
    (a new cell type, a new donor) needs no retraining: only its control cells.
    """

    def __init__(self, n_latent: int, n_embed: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * n_latent, n_embed), nn.SiLU(), nn.Linear(n_embed, n_embed))

    def forward(self, context_stats: torch.Tensor) -> torch.Tensor:
        return self.mlp(context_stats)  # (B, 2D) -> (B, E)


def context_statistics(z_control: torch.Tensor) -> torch.Tensor:
    """Mean and standard deviation of the control latents of one context, ``(2 * D,)``."""
    std = z_control.std(dim=0) if z_control.shape[0] > 1 else torch.zeros_like(z_control[0])
    return torch.cat([z_control.mean(dim=0), std])
