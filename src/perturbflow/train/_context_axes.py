"""The principal axes of each context's cells: where the context transfer's errors are judged.

The benchmarks compare predicted and real cells by the energy distance in 30 principal
components of the real cells; an error in the mean along those axes is what costs it. The
context transfer scores its cross-validated predictions there too, in each training
context's own axes (:meth:`~perturbflow.models._transfer.ContextTransfer.select`).
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

from perturbflow.data import log_normalize, read_rows

N_AXES = 30  # as the benchmarks' energy distance
AXES_CELLS = 1000  # cells per context the axes are fitted on, drawn at random


def context_axes(counts, rows: dict[str, np.ndarray], seed: int, n_axes: int = N_AXES,
                 max_cells: int = AXES_CELLS) -> dict[str, np.ndarray]:
    """``{context: (k, G) principal axes}`` of the log-normalised ``counts`` of each context's
    ``rows`` (its control and perturbed cells; at most ``max_cells`` of them, read from disk
    when the counts are there), ``k = min(n_axes, cells - 1)``; a context with fewer than 3
    cells has none."""
    rng = np.random.default_rng(seed)
    axes = {}
    for context in sorted(rows):
        r = rows[context]
        if len(r) < 3:
            continue
        take = np.sort(rng.choice(r, min(len(r), max_cells), replace=False))
        logx = log_normalize(read_rows(counts, take))
        k = min(n_axes, len(take) - 1, logx.shape[1])
        axes[context] = PCA(k, random_state=seed).fit(logx).components_.astype(np.float32)
    return axes
