"""How much of the gene-space residual (what of a measured change the latent does not carry)
a training group lends to other contexts and perturbations: empirical Bayes per group.

The residual of a group is its measured mean change of log-normalised expression less the
decoded change of its latent mean shift. Where the latent carries the whole effect, what is
left is the sampling noise of the group's mean: noise of another context's cells, which
added to every cell predicted in a new context adds nothing but noise. So when a residual is
carried elsewhere, it is shrunk towards 0 by the positive-part James-Stein factor

``w = max(0, 1 - V / mean_g(r_g^2))``,

with ``V`` the group's sampling variance per gene (the cells' variance over their number,
perturbed and control; ``perturbflow.train.count_statistics``): a residual well above its
noise (an effect the latent misses) is kept nearly whole, one at the level of its noise is
dropped (Efron & Morris 1973). A combination of singles measured in its own context keeps
the singles' whole residuals: there they are measured against the very control cells the
prediction moves, and the Norman combinations need them (top-20 Pearson delta 0.94 with
them, 0.88 with them shrunk, 0.77 without; seed 0, benchmarks/RESULTS.md, "Session 15").
"""

from __future__ import annotations

import numpy as np

GroupKey = tuple[frozenset, str]


def james_stein_weights(residuals: dict[GroupKey, np.ndarray], noise: dict[GroupKey, float]) -> dict[GroupKey, float]:
    """The share of each group's residual to keep, in ``[0, 1]`` (1 for a group without a
    noise estimate)."""
    weights = {}
    for key, r in residuals.items():
        power = float(np.mean(np.square(r)))
        weights[key] = 1.0 if key not in noise or power <= 0 else max(0.0, 1.0 - noise[key] / power)
    return weights
