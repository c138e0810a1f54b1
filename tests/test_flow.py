"""The rectified-flow path, loss and ODE solvers against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from perturbflow.flow import (
    integrate,
    interpolate,
    rectified_flow_loss,
    target_velocity,
)


def test_path_closed_form():
    x0, x1 = torch.randn(4, 2, 3), torch.randn(4, 2, 3)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    xt = interpolate(x0, x1, t)
    assert torch.allclose(xt[0], x0[0]) and torch.allclose(xt[3], x1[3])
    assert torch.allclose(xt[1], 0.75 * x0[1] + 0.25 * x1[1])
    assert torch.allclose(target_velocity(x0, x1), x1 - x0)


def test_loss_is_zero_for_exact_velocity():
    x0, x1 = torch.randn(5, 3, 4), torch.randn(5, 3, 4)
    exact = rectified_flow_loss(lambda x_t, t: x1 - x0, x0, x1)
    assert exact.item() == pytest.approx(0.0, abs=1e-10)
    zero = rectified_flow_loss(lambda x_t, t: torch.zeros_like(x_t), x0, x1)
    assert zero.item() == pytest.approx(((x1 - x0) ** 2).sum(-1).mean().item(), rel=1e-5)


@pytest.mark.parametrize("solver", ["euler", "midpoint", "adaptive"])
def test_constant_velocity_is_exact(solver):
    x0, v = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    x1 = integrate(lambda x, t: v, x0, n_steps=3, solver=solver)
    assert torch.allclose(x1, x0 + v, atol=1e-5)


def test_convergence_orders():
    """On dx/dt = -x, Euler's error falls as 1/n and the midpoint's as 1/n^2."""
    x0 = torch.ones(1, 1, 1, dtype=torch.float64)
    exact = math.exp(-1.0)

    def err(solver, n):
        return abs(integrate(lambda x, t: -x, x0, n_steps=n, solver=solver).item() - exact)

    assert err("euler", 10) / err("euler", 20) == pytest.approx(2.0, rel=0.1)
    assert err("midpoint", 10) / err("midpoint", 20) == pytest.approx(4.0, rel=0.1)
    assert err("adaptive", 0) < 1e-4


def test_time_dependent_velocity_and_path():
    """dx/dt = 2t integrates to x0 + 1; the path has n_steps + 1 states."""
    x0 = torch.zeros(1, 1, 1, dtype=torch.float64)
    x1, path = integrate(lambda x, t: 2 * t.view(-1, 1, 1).expand_as(x), x0, n_steps=8, solver="midpoint", return_path=True)
    assert x1.item() == pytest.approx(1.0, abs=1e-12)
    assert path.shape == (9, 1, 1, 1)


def test_unknown_solver():
    with pytest.raises(ValueError, match="unknown solver"):
        integrate(lambda x, t: x, torch.zeros(1, 1, 1), solver="rk4")
