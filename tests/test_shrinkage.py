"""The share of the gene-space residual carried into another context, cross-validated over
the training contexts."""

from __future__ import annotations

import numpy as np

from perturbflow.models._prior import BaselinePrior
from perturbflow.models._shrinkage import carried_scale


def residuals(consistent: float, n_genes: int = 2000, seed: int = 0) -> BaselinePrior:
    """Residuals of 4 perturbations in 3 contexts: a part shared by the contexts (scaled by
    ``consistent``) plus each context's own noise."""
    rng = np.random.default_rng(seed)
    shifts = {}
    for p in "ABCD":
        shared = consistent * rng.normal(0, 1, n_genes)
        for c in ("x", "y", "z"):
            shifts[(frozenset([p]), c)] = shared + rng.normal(0, 1, n_genes)
    return BaselinePrior(shifts)


def test_a_residual_that_carries_over_is_kept_and_noise_is_dropped():
    assert carried_scale(residuals(consistent=0.0)) < 0.05  # nothing shared: nothing carried
    # shared variance 9 against noise 1 in each context: the mean of two contexts has
    # noise 1/2, so the best share is 9 / (9 + 1/2)
    assert abs(carried_scale(residuals(consistent=3.0)) - 9 / 9.5) < 0.03


def test_one_context_leaves_nothing_to_cross_validate():
    one = BaselinePrior({(frozenset(["A"]), "k562"): np.ones(3), (frozenset(["A", "B"]), "k562"): np.ones(3)})
    assert carried_scale(one) == 1.0


def test_the_scale_is_computed_at_full_strength_and_left_as_it_was():
    p = residuals(consistent=3.0)
    p.carried_scale = 0.1
    assert carried_scale(p) > 0.9
    assert p.carried_scale == 0.1
