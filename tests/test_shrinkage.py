"""The James-Stein share of a residual that a training group lends to other contexts."""

from __future__ import annotations

import numpy as np

from perturbflow.models._shrinkage import james_stein_factor, james_stein_weights


def test_a_residual_at_its_noise_level_is_dropped_and_a_strong_one_kept():
    rng = np.random.default_rng(0)
    noise = 0.01  # sampling variance per gene of the group's mean
    pure_noise = rng.normal(0, np.sqrt(noise), 5000)
    strong = pure_noise + rng.choice([-1.0, 1.0], 5000)  # a power of 1 + noise
    weights = james_stein_weights({"noise": pure_noise, "strong": strong}, {"noise": noise, "strong": noise})
    assert weights["noise"] < 0.05
    assert np.isclose(weights["strong"], 1 - noise / np.mean(strong**2))
    assert weights["strong"] > 0.98


def test_weights_are_a_share_and_a_group_without_noise_keeps_all():
    w = james_stein_weights({"tiny": np.full(10, 1e-3), "none": np.ones(3), "zero": np.zeros(4)}, {"tiny": 1.0, "zero": 1.0})
    assert w == {"tiny": 0.0, "none": 1.0, "zero": 1.0}


def test_factor_is_one_minus_variance_over_power():
    assert np.isclose(james_stein_factor(np.array([3.0, 0.0]), 0.45), 0.9)
    assert james_stein_factor(np.array([1.0, -1.0]), 2.0) == 0.0
    assert james_stein_factor(np.zeros(3), 1.0) == 1.0
