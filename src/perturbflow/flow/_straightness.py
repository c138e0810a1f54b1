"""Straightness of a flow: how far its velocity strays from the straight displacement."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from perturbflow.flow._solvers import Solver, Velocity, _times, integrate


@dataclass
class Straightness:
    """Straightness of the paths integrated from a batch of starting points.

    Attributes
    ----------
    straightness
        ``S = mean over paths of ∫_0^1 |v(x_t, t) - (x_1 - x_0)|^2 dt`` (0 for straight paths
        traversed at constant speed; Liu et al. 2022, eq. 5 / Definition 3.2).
    displacement
        Mean squared length of the straight displacement, ``mean |x_1 - x_0|^2``.
    normalized
        ``straightness / displacement``: the share of the squared displacement by which the
        velocity strays from it on average (scale-free).
    """

    straightness: float
    displacement: float
    normalized: float


@torch.no_grad()
def straightness(
    velocity: Velocity, x_0: torch.Tensor, n_steps: int = 64, solver: Solver = "midpoint"
) -> Straightness:
    """Straightness of the flow ``dx/dt = velocity(x, t)`` from ``x_0`` along its own paths.

    The paths are integrated with ``solver`` in ``n_steps`` equal steps; the velocity is then
    read at every grid point of each path and the squared deviation from the path's own
    displacement ``x_1 - x_0`` is integrated over t with the trapezoidal rule. For a
    rectified flow whose paths are straight the value is 0, and one Euler step then lands
    where the exact solution does.

    Parameters
    ----------
    velocity
        Callable ``(x_t, t) -> v_t`` with the condition bound; ``t`` has shape ``(B,)``.
    x_0
        Starting points ``(B, ..., D)``; the last dimension is the space, all others index paths.
    n_steps
        Steps of the integration and of the quadrature (error ``O(1 / n_steps^2)``).
    solver
        ``"euler"`` or ``"midpoint"``.

    Returns
    -------
    A :class:`Straightness` of Python floats.
    """
    if solver not in ("euler", "midpoint"):
        raise ValueError("straightness needs a fixed-step solver: 'euler' or 'midpoint'")
    _, path = integrate(velocity, x_0, n_steps=n_steps, solver=solver, return_path=True)  # (T+1, B, ..., D)
    shift = path[-1] - path[0]  # (B, ..., D)
    deviation = []
    for i in range(n_steps + 1):
        x_t = path[i]
        v_t = velocity(x_t, _times(x_t, i / n_steps))  # (B, ..., D)
        deviation.append(((v_t - shift) ** 2).sum(-1).mean())
    dev = torch.stack(deviation).double()  # (T+1,)
    value = float(torch.trapezoid(dev, dx=1.0 / n_steps))
    displacement = float((shift.double() ** 2).sum(-1).mean())
    return Straightness(value, displacement, value / displacement if displacement > 0 else 0.0)


def path_straightness(path: torch.Tensor | np.ndarray) -> Straightness:
    """Straightness of paths recorded at equal steps, ``(n_steps + 1, ..., D)``.

    Each step's velocity is read off the path as ``(x_{i+1} - x_i) n_steps`` (for an Euler
    path, exactly the velocity at ``x_i``; for a midpoint path, the velocity at the step's
    midpoint), so the integral of :func:`straightness` becomes a sum over the steps. This needs
    only the recorded path, e.g. ``PerturbFlow.predict(..., return_path=True)``'s.

    Returns
    -------
    A :class:`Straightness` of Python floats.
    """
    path = torch.as_tensor(path, dtype=torch.float64)
    n_steps = path.shape[0] - 1
    if n_steps < 1:
        raise ValueError("a path needs at least two points")
    shift = path[-1] - path[0]  # (..., D)
    v = (path[1:] - path[:-1]) * n_steps  # (T, ..., D)
    value = float(((v - shift) ** 2).sum(-1).mean())  # mean over steps = the integral over t
    displacement = float((shift**2).sum(-1).mean())
    return Straightness(value, displacement, value / displacement if displacement > 0 else 0.0)
