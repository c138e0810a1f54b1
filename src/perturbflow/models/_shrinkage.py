"""How much of the gene-space residual (what of a measured change the latent does not carry)
to carry into another context: the share that predicts it there, cross-validated.

The residual of a training group is its measured mean change of log-normalised expression
less the decoded change of its latent mean shift. What the context transfer carries of it
into a new context (the kernel-weighted residual of the perturbation in the other contexts,
blended with their pooled residual) is worth adding to every predicted cell only in as far as
it predicts the residual measured there. Where the latent carries the effect, what is left is
noise of the other contexts' cells and what is particular to those contexts (a shared shift of
all their perturbed cells, say), and adding it back adds error.

So the share ``lambda`` is taken from the training contexts themselves: each measured group's
own residual ``r_k`` is predicted from the other contexts, ``r_hat_k`` (exactly as for a new
context), and ``lambda`` is the least-squares coefficient of ``r`` on ``r_hat`` over all
groups and genes, clipped to ``[0, 1]``:

``lambda = sum_k <r_k, r_hat_k> / sum_k <r_hat_k, r_hat_k>``.

``r_k``'s own sampling noise is independent of ``r_hat_k`` (other cells), so it does not bias
``lambda``; a residual that carries over keeps ``lambda`` near 1, one that does not gives
near 0. With one measured context there is nothing to carry and ``lambda`` stays 1. A
combination of singles measured in its own context keeps the singles' whole residuals
(the Norman combinations need them: top-20 Pearson delta 0.94 with them, 0.77 without; seed
0, benchmarks/RESULTS.md, "Session 15").
"""

from __future__ import annotations

import numpy as np


def carried_scale(prior) -> float:
    """``lambda`` of the module docstring for a :class:`~perturbflow.models._prior.BaselinePrior`
    of residuals: each single measured in another context too predicted from the others by the
    prior's transfer, whole (as :meth:`~perturbflow.models._prior.BaselinePrior.prior` carries
    it before its ``carried_scale``)."""
    cross, power = 0.0, 0.0
    for (atoms, context), r in prior.shifts.items():
        r_hat = None if len(atoms) > 1 else prior.transfer.transfer(atoms, context, prior.shifts, prior.pooled)
        if r_hat is None:
            continue  # a combination, or a single measured nowhere else: nothing carried
        cross += float(np.dot(r, r_hat))
        power += float(np.dot(r_hat, r_hat))
    return 1.0 if power <= 0 else float(np.clip(cross / power, 0.0, 1.0))
