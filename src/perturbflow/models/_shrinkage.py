"""How much of the gene-space residual (what of a measured change the latent does not carry)
to carry into another context: empirical Bayes on what is carried.

The residual of a training group is its measured mean change of log-normalised expression
less the decoded change of its latent mean shift. Where the latent carries the whole effect,
what is left is the sampling noise of the group's mean: noise of another context's cells,
which, added to every cell predicted in a new context, adds nothing but noise. So what the
context transfer carries (the kernel-weighted mean ``m`` of the perturbation's residuals in
the other contexts) is shrunk towards 0 by the positive-part James-Stein factor

``w = max(0, 1 - V / mean_g(m_g^2))``,

with ``V = sum_c w_c^2 V_c`` the sampling variance per gene of that weighted mean, ``V_c``
each group's (the cells' variance over their number, perturbed and control;
``perturbflow.train.count_statistics``), Efron & Morris (1973). A residual consistent over
several contexts survives (averaging cuts its noise, not its signal); one at its noise level
is dropped. A combination of singles measured in its own context keeps the singles' whole
residuals: there they are measured against the very control cells the prediction moves, and
the Norman combinations need them (top-20 Pearson delta 0.94 with them, 0.77 without; seed
0, benchmarks/RESULTS.md, "Session 15").
"""

from __future__ import annotations

import numpy as np

GroupKey = tuple[frozenset, str]


def james_stein_factor(values: np.ndarray, variance: float) -> float:
    """``max(0, 1 - variance / mean(values ** 2))``: the share of an estimate to keep, given
    the sampling variance per entry of that estimate (1 when it has no power)."""
    power = float(np.mean(np.square(values)))
    return 1.0 if power <= 0 else max(0.0, 1.0 - variance / power)


def james_stein_weights(residuals: dict[GroupKey, np.ndarray], noise: dict[GroupKey, float]) -> dict[GroupKey, float]:
    """The share of each group's own residual to keep, in ``[0, 1]`` (1 for a group without a
    noise estimate)."""
    return {k: james_stein_factor(r, noise[k]) if k in noise else 1.0 for k, r in residuals.items()}
