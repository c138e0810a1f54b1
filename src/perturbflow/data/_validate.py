"""Checks on the counts and keys of an AnnData, chunked so sparse input is never densified."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from perturbflow._errors import PerturbFlowError

CHUNK_ROWS = 4096


def get_counts(adata: AnnData, layer: str | None = None):
    """Return the counts matrix (``X`` or ``layers[layer]``) without copying it."""
    if layer is None:
        if adata.X is None:
            raise PerturbFlowError("AnnData has no X; pass layer= to name the layer holding counts")
        return adata.X
    if layer not in adata.layers:
        known = ", ".join(adata.layers.keys()) or "none"
        raise PerturbFlowError(f"layer {layer!r} not found in AnnData (layers: {known})")
    return adata.layers[layer]


def _values(block) -> np.ndarray:
    if sp.issparse(block):
        return np.asarray(block.data)
    return np.asarray(block)


def check_counts(adata: AnnData, layer: str | None = None) -> None:
    """Raise :class:`PerturbFlowError` unless the counts are non-negative, finite integers.

    The check runs over row chunks, so a sparse or backed matrix is never densified whole.
    """
    if adata.n_obs == 0:
        raise PerturbFlowError("AnnData has no cells")
    if adata.n_vars == 0:
        raise PerturbFlowError("AnnData has no genes")
    X = get_counts(adata, layer)
    where = f"layers[{layer!r}]" if layer else "X"
    for start in range(0, adata.n_obs, CHUNK_ROWS):
        values = _values(X[start : start + CHUNK_ROWS])
        if values.dtype.kind not in "biuf":
            raise PerturbFlowError(f"counts in {where} are not numeric (dtype {values.dtype})")
        if values.dtype.kind == "f":
            if not np.all(np.isfinite(values)):
                raise PerturbFlowError(f"counts in {where} contain NaN or infinite values")
            if np.any(values != np.round(values)):
                raise PerturbFlowError(
                    f"counts in {where} are not integers (log-normalised data?); "
                    "pass layer= naming the raw counts"
                )
        if np.any(values < 0):
            raise PerturbFlowError(f"counts in {where} contain negative values")
