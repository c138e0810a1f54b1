"""The noise ceiling: real cells scored against other real cells of the same group."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from anndata import AnnData

from perturbflow.metrics._groups import (
    as_key_list,
    canonical_labels,
    cell_contexts,
    check_obs_key,
    group_codes,
)


def noise_ceiling_split(
    adata_real: AnnData,
    perturbation_key: str,
    control_value: str,
    seed: int = 0,
    context_keys: str | Sequence[str] | None = None,
) -> tuple[AnnData, AnnData]:
    """Split the perturbed cells of every group in two halves, to score real against real.

    Each (perturbation, context) group of perturbed cells is shuffled and cut in two: the first
    ``n // 2`` cells go to the "prediction", the rest to the "real" half (a group of one cell
    is only in the real half). Control cells are kept whole in both, so deltas of both halves
    are against the same controls. Passing the two halves to :func:`evaluate_predictions`
    gives the score of a perfect predictor limited only by sampling noise.

    Parameters
    ----------
    adata_real
        Real cells.
    perturbation_key
        Column of ``obs`` with perturbation labels.
    control_value
        Label of control cells.
    seed
        Seed of the shuffle.
    context_keys
        Columns of ``obs`` defining the context; groups are split within each context.

    Returns
    -------
    ``(half_a_as_prediction, half_b_as_real)``: two AnnData copies of subsets of
    ``adata_real``, in its original cell order.
    """
    context_keys = as_key_list(context_keys)
    for key in [perturbation_key, *context_keys]:
        check_obs_key(adata_real, key, "key", "real AnnData")
    perts = canonical_labels(adata_real.obs[perturbation_key], control_value)
    codes, groups = group_codes(perts, cell_contexts(adata_real, context_keys))
    rng = np.random.default_rng(seed)
    in_a = np.zeros(adata_real.n_obs, dtype=bool)
    in_b = np.zeros(adata_real.n_obs, dtype=bool)
    for i, (pert, _) in enumerate(groups):
        rows = np.flatnonzero(codes == i)
        if pert == control_value:
            in_a[rows] = in_b[rows] = True
            continue
        rows = rng.permutation(rows)
        in_a[rows[: rows.size // 2]] = True
        in_b[rows[rows.size // 2 :]] = True
    return adata_real[in_a].copy(), adata_real[in_b].copy()
