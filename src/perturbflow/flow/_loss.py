"""The rectified-flow (conditional flow matching) loss."""

from __future__ import annotations

from collections.abc import Callable

import torch

from perturbflow.flow._path import interpolate, sample_time, target_velocity


def rectified_flow_loss(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_0: torch.Tensor,
    x_1: torch.Tensor,
    t: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error between ``velocity(x_t, t)`` and ``x_1 - x_0`` on the straight path.

    Parameters
    ----------
    velocity
        Callable ``(x_t, t) -> v_t`` with the condition already bound.
    x_0, x_1
        Source and target latents, ``(B, S, D)``.
    t
        Times ``(B,)``; uniform when omitted.
    """
    if t is None:
        t = sample_time(x_0.shape[0], device=x_0.device)
    x_t = interpolate(x_0, x_1, t)  # (B, S, D)
    v_t = velocity(x_t, t)  # (B, S, D)
    return ((v_t - target_velocity(x_0, x_1)) ** 2).sum(-1).mean()
