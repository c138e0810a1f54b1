"""Carrying sets of latents from t=0 to t=1 under a flow's conditioned velocity."""

from __future__ import annotations

import torch

from perturbflow.flow._solvers import Solver, integrate


class Transports:
    """What a flow module gives prediction: ``transport``, from its ``conditioned_velocity``
    (atom indices, context statistics, prior and ``new_context`` to ``(x_t, t) -> v_t``)."""

    @torch.no_grad()
    def transport(
        self,
        x_0: torch.Tensor,
        atoms: torch.Tensor,
        context: torch.Tensor,
        prior: torch.Tensor,
        n_steps: int = 20,
        solver: Solver = "midpoint",
        return_path: bool = False,
        new_context: bool = False,
    ):
        """Integrate sets ``x_0`` of shape ``(B, S, D)`` from t=0 to t=1 under the condition
        (under the null context when ``new_context``)."""
        velocity = self.conditioned_velocity(atoms, context, prior, new_context)
        return integrate(velocity, x_0, n_steps=n_steps, solver=solver, return_path=return_path)
