"""The latent flow module: conditioning encoders plus a velocity backbone (tensors in, loss out)."""

from __future__ import annotations

import torch
from torch import nn

from perturbflow.backbones import build_backbone
from perturbflow.flow._loss import rectified_flow_loss
from perturbflow.flow._solvers import Solver, integrate
from perturbflow.nn import ContextEncoder, PerturbationEncoder


class LatentFlowModule(nn.Module):
    """Conditional rectified flow in the VAE's latent space.

    The condition is the concatenation of the perturbation encoding (deep sets over atoms)
    and the context encoding (statistics of the context's control latents).
    """

    def __init__(
        self,
        n_latent: int,
        n_atoms: int,
        backbone: str = "mlp",
        n_embed: int = 64,
        backbone_kwargs: dict | None = None,
    ):
        super().__init__()
        self.perturbation_encoder = PerturbationEncoder(n_atoms, n_embed)
        self.context_encoder = ContextEncoder(n_latent, n_embed)
        self.backbone = build_backbone(backbone, n_latent, 2 * n_embed, **(backbone_kwargs or {}))

    def condition(self, atoms: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``(B, A)`` atom indices and ``(B, 2D)`` context statistics to a ``(B, C)`` condition."""
        return torch.cat([self.perturbation_encoder(atoms), self.context_encoder(context)], dim=-1)

    def loss(self, x_0: torch.Tensor, x_1: torch.Tensor, atoms: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        cond = self.condition(atoms, context)  # (B, C)
        return rectified_flow_loss(lambda x_t, t: self.backbone(x_t=x_t, t=t, cond=cond), x_0, x_1)

    @torch.no_grad()
    def transport(
        self,
        x_0: torch.Tensor,
        atoms: torch.Tensor,
        context: torch.Tensor,
        n_steps: int = 20,
        solver: Solver = "midpoint",
        return_path: bool = False,
    ):
        """Integrate sets ``x_0`` of shape ``(B, S, D)`` from t=0 to t=1 under the condition."""
        cond = self.condition(atoms, context)  # (B, C)
        return integrate(
            lambda x_t, t: self.backbone(x_t=x_t, t=t, cond=cond),
            x_0,
            n_steps=n_steps,
            solver=solver,
            return_path=return_path,
        )
