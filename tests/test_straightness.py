"""Straightness of a flow against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from perturbflow.flow import straightness


@pytest.mark.parametrize("solver", ["euler", "midpoint"])
def test_constant_velocity_is_straight(solver):
    x0, v = torch.randn(6, 4, 3), torch.randn(6, 4, 3)
    s = straightness(lambda x, t: v, x0, n_steps=4, solver=solver)
    assert s.straightness == pytest.approx(0.0, abs=1e-10)
    assert s.displacement == pytest.approx((v**2).sum(-1).mean().item(), rel=1e-5)
    assert s.normalized == pytest.approx(0.0, abs=1e-10)


def test_time_dependent_speed_closed_form():
    # v(t) = c + k (t - 1/2): the displacement is c, the deviation k (t - 1/2), whose
    # squared integral over [0, 1] is |k|^2 / 12
    c, k = torch.randn(5, 3), torch.randn(5, 3)
    s = straightness(lambda x, t: c + k * (t[:, None] - 0.5), torch.zeros(5, 3), n_steps=200)
    assert s.straightness == pytest.approx((k**2).sum(-1).mean().item() / 12, rel=1e-4)


@pytest.mark.parametrize("omega", [0.5, 2.0])
def test_rotation_closed_form(omega):
    # dx/dt = omega J x rotates x_0 by omega t: |v|^2 = omega^2 |x_0|^2 and the mean velocity
    # is the displacement d, |d|^2 = (2 - 2 cos omega) |x_0|^2, so
    # S = int |v - d|^2 dt = int |v|^2 dt - |d|^2 = (omega^2 - 2 + 2 cos omega) |x_0|^2
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    x0 = torch.randn(64, 2, dtype=torch.float64)
    s = straightness(lambda x, t: omega * x @ J.T, x0, n_steps=400)
    r2 = (x0**2).sum(-1).mean().item()
    assert s.straightness == pytest.approx((omega**2 - 2 + 2 * math.cos(omega)) * r2, rel=1e-3)
    assert s.normalized == pytest.approx((omega**2 - 2 + 2 * math.cos(omega)) / (2 - 2 * math.cos(omega)), rel=1e-3)


def test_adaptive_solver_is_refused():
    with pytest.raises(ValueError, match="fixed-step"):
        straightness(lambda x, t: x, torch.zeros(2, 2), solver="adaptive")


@pytest.mark.parametrize("solver", ["euler", "midpoint"])
def test_path_straightness_matches_the_velocity_form(solver):
    from perturbflow.flow import integrate, path_straightness

    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    x0 = torch.randn(32, 2, dtype=torch.float64)
    _, path = integrate(lambda x, t: 1.5 * x @ J.T, x0, n_steps=300, solver=solver, return_path=True)
    r2 = (x0**2).sum(-1).mean().item()
    assert path_straightness(path).straightness == pytest.approx((1.5**2 - 2 + 2 * math.cos(1.5)) * r2, rel=1e-2)
    straight = torch.stack([x0 + t * torch.ones(2, dtype=torch.float64) for t in torch.linspace(0, 1, 5)])
    assert path_straightness(straight.numpy()).straightness == pytest.approx(0.0, abs=1e-12)
