"""ODE solvers integrating ``dx/dt = v(x, t)`` from t=0 to t=1."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Solver = Literal["euler", "midpoint", "adaptive"]


def _times(x: torch.Tensor, value: float) -> torch.Tensor:
    return torch.full((x.shape[0],), value, dtype=x.dtype, device=x.device)


@torch.no_grad()
def euler(velocity: Velocity, x_0: torch.Tensor, n_steps: int, return_path: bool = False):
    """Explicit Euler with ``n_steps`` equal steps."""
    h = 1.0 / n_steps
    x, path = x_0, [x_0]
    for i in range(n_steps):
        x = x + h * velocity(x, _times(x, i * h))
        path.append(x)
    return (x, torch.stack(path)) if return_path else x


@torch.no_grad()
def midpoint(velocity: Velocity, x_0: torch.Tensor, n_steps: int, return_path: bool = False):
    """Explicit midpoint (second-order Runge-Kutta) with ``n_steps`` equal steps."""
    h = 1.0 / n_steps
    x, path = x_0, [x_0]
    for i in range(n_steps):
        t = i * h
        x_mid = x + 0.5 * h * velocity(x, _times(x, t))
        x = x + h * velocity(x_mid, _times(x, t + 0.5 * h))
        path.append(x)
    return (x, torch.stack(path)) if return_path else x


@torch.no_grad()
def adaptive(
    velocity: Velocity, x_0: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-5, return_path: bool = False
):
    """Adaptive Runge-Kutta 4(5) (Dormand-Prince) through :func:`scipy.integrate.solve_ivp`."""
    from scipy.integrate import solve_ivp

    shape, dtype, device = x_0.shape, x_0.dtype, x_0.device

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(y, dtype=dtype, device=device).view(shape)
        return velocity(x, _times(x, t)).reshape(-1).double().cpu().numpy()

    sol = solve_ivp(rhs, (0.0, 1.0), x_0.reshape(-1).double().cpu().numpy(), method="RK45", rtol=rtol, atol=atol)
    xs = torch.as_tensor(sol.y.T, dtype=dtype, device=device).view(-1, *shape)
    return (xs[-1], xs) if return_path else xs[-1]


SOLVERS = {"euler": euler, "midpoint": midpoint, "adaptive": adaptive}


def integrate(
    velocity: Velocity,
    x_0: torch.Tensor,
    n_steps: int = 20,
    solver: Solver = "midpoint",
    return_path: bool = False,
):
    """Integrate the flow from ``x_0`` at t=0 to t=1 with the named solver."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; known: {', '.join(SOLVERS)}")
    if solver == "adaptive":
        return adaptive(velocity, x_0, return_path=return_path)
    return SOLVERS[solver](velocity, x_0, n_steps, return_path=return_path)
