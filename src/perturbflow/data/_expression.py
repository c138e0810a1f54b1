"""Log-normalised expression, the scale models and metrics both work on.

``log1p(normalize_total(x, target_sum))`` as in :func:`scanpy.pp.normalize_total` followed by
:func:`scanpy.pp.log1p`, done row by row so that a sparse matrix stays sparse until a subset
of it is needed densely.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from perturbflow._errors import PerturbFlowError
from perturbflow.data._validate import get_counts

TARGET_SUM = 1e4


def _matrix(
    adata_or_matrix: AnnData | np.ndarray | sp.spmatrix, layer: str | None
) -> np.ndarray | sp.spmatrix:
    if isinstance(adata_or_matrix, AnnData):
        return get_counts(adata_or_matrix, layer)
    if layer is not None:
        raise PerturbFlowError("layer= is only meaningful for an AnnData input")
    return adata_or_matrix


def row_totals(X: np.ndarray | sp.spmatrix) -> np.ndarray:
    """Total count of each row, as float64 of shape ``(n_obs,)``."""
    return np.asarray(X.sum(axis=1), dtype=np.float64).ravel()


def log_normalize_rows(
    X: np.ndarray | sp.spmatrix, target_sum: float = TARGET_SUM
) -> np.ndarray | sp.csr_matrix:
    """``log1p`` of each row scaled to ``target_sum``, keeping sparse input sparse.

    Rows that sum to zero stay zero (scanpy divides them by one).

    Parameters
    ----------
    X
        Counts, cells by genes, dense or sparse.
    target_sum
        Total each row is scaled to before ``log1p``.

    Returns
    -------
    A float32 CSR matrix for sparse input, a dense float32 array otherwise.
    """
    totals = row_totals(X)
    if np.any(totals < 0) or not np.all(np.isfinite(totals)):
        raise PerturbFlowError("expression contains negative or non-finite row totals")
    scale = target_sum / np.where(totals > 0, totals, 1.0)
    if sp.issparse(X):
        out = sp.csr_matrix(X, dtype=np.float64, copy=True)
        out.data *= np.repeat(scale, np.diff(out.indptr))
        np.log1p(out.data, out=out.data)
        return out.astype(np.float32)
    out = np.asarray(X, dtype=np.float64) * scale[:, None]
    return np.log1p(out).astype(np.float32)


def log_normalized_mean(X: np.ndarray | sp.spmatrix, target_sum: float = TARGET_SUM) -> np.ndarray:
    """Mean row of :func:`log_normalize_rows` ``(X)``, float64 ``(n_vars,)``, computed on the
    stored entries of a sparse ``X`` without building the normalised matrix."""
    if not sp.issparse(X):
        return np.asarray(log_normalize_rows(X, target_sum), dtype=np.float64).mean(0)
    X = sp.csr_matrix(X)
    totals = row_totals(X)
    if np.any(totals < 0) or not np.all(np.isfinite(totals)):
        raise PerturbFlowError("expression contains negative or non-finite row totals")
    scale = target_sum / np.where(totals > 0, totals, 1.0)
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    values = np.log1p(X.data * scale[rows])
    return np.bincount(X.indices, weights=values, minlength=X.shape[1]) / max(X.shape[0], 1)


def log_normalize(
    adata_or_matrix: AnnData | np.ndarray | sp.spmatrix,
    layer: str | None = None,
    target_sum: float = TARGET_SUM,
) -> np.ndarray:
    """Dense ``log1p(normalize_total(counts, target_sum))``.

    Equivalent to ``sc.pp.normalize_total(adata, target_sum=target_sum); sc.pp.log1p(adata)``
    on a copy; sparse input is normalised sparse and only densified at the end.

    Parameters
    ----------
    adata_or_matrix
        An AnnData (counts in ``X`` or ``layers[layer]``) or a cells-by-genes counts matrix.
    layer
        Layer holding the counts when an AnnData is given; ``None`` uses ``X``.
    target_sum
        Total every cell is scaled to.

    Returns
    -------
    Dense float32 array of shape ``(n_obs, n_vars)``.
    """
    out = log_normalize_rows(_matrix(adata_or_matrix, layer), target_sum)
    return out.toarray() if sp.issparse(out) else out


def dense_rows(X: np.ndarray | sp.spmatrix, rows: np.ndarray) -> np.ndarray:
    """The given rows of ``X`` as a dense float64 array."""
    sub = X[rows]
    return (sub.toarray() if sp.issparse(sub) else np.asarray(sub)).astype(np.float64)


def group_means(X: np.ndarray | sp.spmatrix, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Mean row of each group, without densifying ``X``.

    Parameters
    ----------
    X
        Cells by genes.
    codes
        Group index of every row in ``[0, n_groups)``; rows with a negative code are ignored.
    n_groups
        Number of groups.

    Returns
    -------
    Float64 array ``(n_groups, n_vars)``; a group with no rows is all NaN.
    """
    keep = np.flatnonzero(codes >= 0)
    counts = np.bincount(codes[keep], minlength=n_groups).astype(np.float64)
    weights = 1.0 / np.where(counts > 0, counts, 1.0)
    indicator = sp.csr_matrix(
        (weights[codes[keep]], (codes[keep], keep)), shape=(n_groups, X.shape[0])
    )
    means = indicator @ X  # (n_groups, G)
    means = means.toarray() if sp.issparse(means) else np.asarray(means)
    means = means.astype(np.float64)
    means[counts == 0] = np.nan
    return means


def mean_exact_shift(cells: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Per gene, the shift ``s`` with ``mean(max(cells + s, 0)) = max(mean(cells) + delta, 0)``.

    ``cells`` are log-normalised ``(n, G)``; bisection, as the clipped mean increases with ``s``.
    Moving cells by a mean change and clipping at 0 lifts the mean of a gene that goes down
    (its zeros cannot fall); this shift puts the mean where the change says.
    """
    target = np.maximum(cells.mean(0) + delta, 0)
    lo, hi = -cells.max(0) - 1 - np.abs(delta), np.abs(delta) + 1
    for _ in range(50):
        mid = (lo + hi) / 2
        below = np.maximum(cells + mid, 0).mean(0) < target
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return hi
