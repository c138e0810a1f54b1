"""The latent flow module: conditioning encoders plus a velocity backbone (tensors in, loss out)."""

from __future__ import annotations

import torch
from torch import nn

from perturbflow.backbones import build_backbone
from perturbflow.flow._loss import rectified_flow_loss
from perturbflow.flow._transport import Transports
from perturbflow.nn import ContextEncoder, PerturbationEncoder


class LatentFlowModule(Transports, nn.Module):
    """Conditional rectified flow in the VAE's latent space.

    The condition is the concatenation of the perturbation encoding (deep sets over atoms),
    the context encoding (statistics of the context's control latents) and an encoding of
    the baseline prior (the latent shift a simple baseline predicts). With
    ``residual_prior`` the velocity is ``prior + backbone(x_t, t, cond)``, so the untrained
    flow reproduces the baseline and training learns the correction.
    """

    def __init__(
        self,
        n_latent: int,
        n_atoms: int,
        backbone: str = "mlp",
        n_embed: int = 64,
        backbone_kwargs: dict | None = None,
        residual_prior: bool = True,
        atom_pooling: str = "mean",
        context_dropout: float = 0.0,
    ):
        super().__init__()
        self.residual_prior = residual_prior
        self.context_dropout = context_dropout
        # stands in for the context's encoding where the context is unknown to the flow
        self.null_context = nn.Parameter(torch.zeros(n_embed))
        self.perturbation_encoder = PerturbationEncoder(n_atoms, n_embed, atom_pooling)
        self.context_encoder = ContextEncoder(n_latent, n_embed)
        self.prior_encoder = nn.Sequential(nn.Linear(n_latent, n_embed), nn.SiLU(), nn.Linear(n_embed, n_embed))
        self.backbone = build_backbone(backbone, n_latent, 3 * n_embed, **(backbone_kwargs or {}))

    def condition(
        self, atoms: torch.Tensor, context: torch.Tensor, prior: torch.Tensor, null_context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Atom indices ``(B, A)``, context statistics ``(B, 2D)`` and prior ``(B, D)`` to ``(B, C)``.

        Where ``null_context`` ``(B,)`` is true, the learned null context replaces the
        context's encoding.
        """
        ctx = self.context_encoder(context)  # (B, E)
        if null_context is not None:
            ctx = torch.where(null_context.unsqueeze(-1), self.null_context.expand_as(ctx), ctx)
        return torch.cat([self.perturbation_encoder(atoms), ctx, self.prior_encoder(prior)], dim=-1)

    def velocity_field(self, cond: torch.Tensor, prior: torch.Tensor):
        """The velocity ``(x_t, t) -> v_t`` under a fixed condition."""
        offset = prior.unsqueeze(1) if self.residual_prior else torch.zeros_like(prior).unsqueeze(1)  # (B, 1, D)
        return lambda x_t, t: offset + self.backbone(x_t=x_t, t=t, cond=cond)

    def loss(
        self, x_0: torch.Tensor, x_1: torch.Tensor, atoms: torch.Tensor, context: torch.Tensor, prior: torch.Tensor
    ) -> torch.Tensor:
        drop = None
        if self.training and self.context_dropout > 0:  # context dropout: the null context learns
            drop = torch.rand(x_0.shape[0], device=x_0.device) < self.context_dropout  # (B,)
        cond = self.condition(atoms, context, prior, drop)  # (B, C)
        return rectified_flow_loss(self.velocity_field(cond, prior), x_0, x_1)

    def conditioned_velocity(
        self, atoms: torch.Tensor, context: torch.Tensor, prior: torch.Tensor, new_context: bool = False
    ):
        """The velocity ``(x_t, t) -> v_t`` of sets under their condition (under the null context
        when ``new_context``)."""
        null = torch.full((atoms.shape[0],), new_context, dtype=torch.bool, device=atoms.device)
        return self.velocity_field(self.condition(atoms, context, prior, null), prior)
