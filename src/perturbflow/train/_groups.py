"""The flow's training data: cells grouped by (perturbation, context), with each group's prior."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

from perturbflow.data import Group
from perturbflow.data._expression import log_normalize_rows
from perturbflow.data._streaming import GroupMeans, row_blocks

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
) -> tuple[dict[GroupKey, np.ndarray], dict[str, np.ndarray], dict[GroupKey, float]]:
    """Each group's mean log-normalised shift from its context's control cells, the mean
    log-normalised expression of each context's control cells, and the sampling variance of
    each group's mean averaged over genes (``var(group) / n``; the control mean's variance is
    left out, as every shift of the context shares it)."""
    return _shifts_over_blocks(row_blocks(logx), logx.shape[0], cells, control_mask, contexts)


def count_statistics(
    counts, cells: dict[GroupKey, np.ndarray], control_mask: np.ndarray, contexts: np.ndarray
) -> tuple[dict[GroupKey, np.ndarray], dict[str, np.ndarray], dict[GroupKey, float], np.ndarray]:
    """:func:`gene_space_shifts` of the log-normalised ``counts``, and every cell's library
    size ``(n_obs,)`` float32, in one pass over blocks of rows.

    Counts on disk are read and log-normalised a block at a time, so neither the matrix nor
    its log-normalised copy is ever held whole; counts in memory are one block, which gives
    exactly the whole-matrix results.
    """
    library = np.zeros(counts.shape[0], dtype=np.float32)

    def blocks():
        for rows, block in row_blocks(counts):
            library[rows] = np.asarray(block.sum(axis=1), dtype=np.float32).ravel()
            logx = log_normalize_rows(block)
            del block  # one block of counts alive at a time, not two
            yield rows, logx

    return (*_shifts_over_blocks(blocks(), counts.shape[0], cells, control_mask, contexts), library)


def _shifts_over_blocks(blocks, n_obs: int, cells, control_mask, contexts):
    keys = list(cells)
    codes = np.full(n_obs, -1)
    for i, k in enumerate(keys):
        codes[cells[k]] = i
    ctx_names = sorted(set(contexts[control_mask]))
    ctrl_codes = np.where(control_mask, np.searchsorted(ctx_names, contexts), -1)
    moments = [GroupMeans(codes, len(keys)), GroupMeans(codes, len(keys)), GroupMeans(ctrl_codes, len(ctx_names))]
    for rows, logx in blocks:
        squares = logx.multiply(logx) if sp.issparse(logx) else np.square(logx)
        for acc, block in zip(moments, (logx, squares, logx)):
            acc.add(block, rows)
    means, sq, ctrl = (acc.result() for acc in moments)
    n = np.bincount(codes[codes >= 0], minlength=len(keys))
    shifts, noise = {}, {}
    for i, k in enumerate(keys):
        j = ctx_names.index(k[1])
        shifts[k] = means[i] - ctrl[j]
        # the sampling variance of the perturbed cells' mean (the control mean's is shared by
        # every shift of the context: see perturbflow.models._transfer)
        noise[k] = float(np.maximum(sq[i] - means[i] ** 2, 0).mean() / max(n[i] - 1, 1))
    return shifts, dict(zip(ctx_names, ctrl)), noise


def build_groups(
    cells: dict[GroupKey, np.ndarray],
    prior,
    atom_index: dict[str, int],
    context_index: dict[str, int],
    control_rows: dict[str, np.ndarray],
    own_prior: bool = False,
) -> list[Group]:
    """The flow's :class:`~perturbflow.data.Group` of each (atom set, context), its prior from
    ``prior`` (a :class:`~perturbflow.models._prior.BaselinePrior`): leaving the group out, or
    with ``own_prior`` the group's own measured shift."""
    return [
        Group(
            "+".join(sorted(a)),
            context_index[c],
            np.array([atom_index[x] for x in sorted(a)]),
            target,
            control_rows[c],
            prior.shifts[(a, c)] if own_prior and (a, c) in prior.shifts else prior.prior(a, c),
        )
        for (a, c), target in cells.items()
    ]


def decoded_shifts(
    vae, z_all: np.ndarray, library: np.ndarray, latent_shifts: dict[GroupKey, np.ndarray],
    control_rows: dict[str, np.ndarray], seed: int, max_cells: int = 256,
) -> dict[GroupKey, np.ndarray]:
    """Each group's latent mean shift as the decoder carries it to genes: the mean over (up to
    ``max_cells``) control cells of its context of the log-normalised change of moving each
    cell's latent by the shift (:meth:`~perturbflow.nn.CountVAE.log_change`)."""
    rng = np.random.default_rng(seed)
    picked = {
        c: rng.choice(r, min(len(r), max_cells), replace=False) for c, r in control_rows.items()
    }
    out = {}
    for (atoms, c), shift in latent_shifts.items():
        rows = picked[c]
        out[(atoms, c)] = vae.log_change(z_all[rows], z_all[rows] + shift, library[rows]).mean(0)
    return out
