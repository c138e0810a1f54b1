"""The flow's training data: cells grouped by (perturbation, context), with each group's prior."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from perturbflow.data import Group
from perturbflow.metrics._expression import group_means

logger = logging.getLogger(__name__)

GroupKey = tuple[frozenset, str]


def cells_by_group(
    atoms: list[frozenset], contexts: np.ndarray, mask: np.ndarray, known_contexts, known_atoms
) -> dict[GroupKey, np.ndarray]:
    """Rows of the cells in ``mask`` for each (atom set, context) group.

    Groups of a context without control cells (``known_contexts``) are skipped with a
    warning, as are groups with an atom outside ``known_atoms``.
    """
    frame = pd.DataFrame({"atoms": [frozenset(a) for a in atoms], "context": contexts})
    rows = np.flatnonzero(mask)
    out = {}
    for (a, c), idx in frame.iloc[rows].groupby(["atoms", "context"]).indices.items():
        if c not in known_contexts:
            logger.warning("context %s has no control cells; its perturbed cells are skipped", c)
        elif all(x in known_atoms for x in a):
            out[(a, c)] = rows[idx]
    return out


def gene_space_shifts(
    logx, cells: dict[GroupKey, np.ndarray], control_mask: np.ndarray, contexts: np.ndarray
) -> tuple[dict[GroupKey, np.ndarray], dict[str, np.ndarray]]:
    """Each group's mean log-normalised shift from its context's control cells, and the mean
    log-normalised expression of each context's control cells."""
    keys = list(cells)
    codes = np.full(logx.shape[0], -1)
    for i, k in enumerate(keys):
        codes[cells[k]] = i
    ctx_names = sorted(set(contexts[control_mask]))
    ctrl_codes = np.where(control_mask, np.searchsorted(ctx_names, contexts), -1)
    means = group_means(logx, codes, len(keys))
    ctrl = group_means(logx, ctrl_codes, len(ctx_names))
    shifts = {k: means[i] - ctrl[ctx_names.index(k[1])] for i, k in enumerate(keys)}
    return shifts, dict(zip(ctx_names, ctrl))


def build_groups(
    cells: dict[GroupKey, np.ndarray],
    prior,
    atom_index: dict[str, int],
    context_index: dict[str, int],
    control_rows: dict[str, np.ndarray],
) -> list[Group]:
    """The flow's :class:`~perturbflow.data.Group` of each (atom set, context), its prior from
    ``prior`` (a :class:`~perturbflow.models._prior.BaselinePrior`, leaving the group out)."""
    return [
        Group(
            "+".join(sorted(a)),
            context_index[c],
            np.array([atom_index[x] for x in sorted(a)]),
            target,
            control_rows[c],
            prior.prior(a, c),
        )
        for (a, c), target in cells.items()
    ]
