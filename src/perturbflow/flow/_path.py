"""The rectified-flow probability path: straight lines from x_0 to x_1."""

from __future__ import annotations

import torch


def interpolate(x_0: torch.Tensor, x_1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) x_0 + t x_1``, with ``t`` of shape ``(B,)`` broadcast over the rest."""
    t = t.view(-1, *([1] * (x_0.dim() - 1)))
    return (1 - t) * x_0 + t * x_1


def target_velocity(x_0: torch.Tensor, x_1: torch.Tensor) -> torch.Tensor:
    """The velocity of the straight path, ``v_t = x_1 - x_0`` (constant in t)."""
    return x_1 - x_0


def sample_time(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Uniform times in [0, 1], shape ``(n,)``."""
    return torch.rand(n, generator=generator, device=device)
