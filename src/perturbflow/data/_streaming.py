"""Counts kept on disk: opening an .h5ad file or a .zarr store without loading its matrix,
reading rows of it, and statistics over every cell in one pass over row blocks.

The on-disk matrix is anndata's backed sparse dataset (:func:`anndata.io.sparse_dataset`,
what ``anndata.read_h5ad(path, backed="r")`` gives in ``X``): it reads a slice of rows as a
SciPy CSR matrix, and scvi-tools' data loader draws its minibatches from it directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from perturbflow._errors import PerturbFlowError

# rows of an on-disk matrix read at once: about 13 MB of counts for 2,000 genes at 800 counts
# a cell, and about 100 MB with its transient copies (the allocator keeps that much)
CHUNK_ROWS = 2048


def is_on_disk(X) -> bool:
    """Whether ``X`` is a matrix on disk (anndata's backed sparse dataset, an h5py or zarr array)."""
    return not (isinstance(X, np.ndarray) or sp.issparse(X)) and hasattr(X, "shape")


def check_readable_by_rows(X) -> None:
    """Refuse an on-disk matrix stored by columns, whose row reads would read all of it."""
    if is_on_disk(X) and getattr(X, "format", None) == "csc":
        raise PerturbFlowError("the counts on disk are CSC (stored by genes); rewrite them as CSR to train from disk")


def row_blocks(X, chunk_rows: int | None = None) -> Iterator[tuple[slice, np.ndarray | sp.spmatrix]]:
    """Contiguous blocks of rows of ``X``, each with its slice.

    A matrix in memory is one block (statistics over it then stay exactly what they were
    before streaming existed); a matrix on disk comes ``chunk_rows`` (default
    :data:`CHUNK_ROWS`) rows at a time.
    """
    n = X.shape[0]
    step = (chunk_rows or CHUNK_ROWS) if is_on_disk(X) else max(n, 1)
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        yield rows, X[rows]


def read_rows(X, rows: np.ndarray):
    """``X[rows]`` in the order of ``rows``; an on-disk matrix is read as few contiguous slices.

    Row-by-row reads of an on-disk sparse matrix cost two file reads a row; sorted rows that
    lie close together (the chunks of the encoder's pass) are read as one slice instead.
    """
    if not is_on_disk(X):
        return X[rows]
    rows = np.asarray(rows)
    if len(rows) == 0:
        return X[0:0]
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    lo, hi = int(sorted_rows[0]), int(sorted_rows[-1]) + 1
    if hi - lo <= 4 * len(rows) + CHUNK_ROWS:
        block = X[lo:hi][sorted_rows - lo]
    else:
        block = X[sorted_rows]
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return block[inverse]


class GroupMeans:
    """Mean row of each group, added up block by block of rows.

    Each row enters with the weight ``1 / size of its group``, so that one block holding all
    rows gives exactly :func:`~perturbflow.data.group_means`.

    Parameters
    ----------
    codes
        Group of every row in ``[0, n_groups)``; rows with a negative code are ignored.
    n_groups
        Number of groups.
    """

    def __init__(self, codes: np.ndarray, n_groups: int):
        self.codes = np.asarray(codes)
        self.counts = np.bincount(self.codes[self.codes >= 0], minlength=n_groups).astype(np.float64)
        self.weights = 1.0 / np.where(self.counts > 0, self.counts, 1.0)
        self.n_groups = n_groups
        self.total: np.ndarray | None = None

    def add(self, block, rows: slice) -> None:
        """Add the rows ``rows`` of the matrix, given as ``block``."""
        codes = self.codes[rows]
        keep = np.flatnonzero(codes >= 0)
        indicator = sp.csr_matrix(
            (self.weights[codes[keep]], (codes[keep], keep)), shape=(self.n_groups, block.shape[0])
        )
        part = indicator @ block  # (n_groups, G)
        part = (part.toarray() if sp.issparse(part) else np.asarray(part)).astype(np.float64)
        if self.total is None:
            self.total = part
        else:
            self.total += part

    def result(self) -> np.ndarray:
        """Float64 ``(n_groups, n_vars)``; a group with no rows is all NaN."""
        means = self.total.copy()
        means[self.counts == 0] = np.nan
        return means


def open_on_disk(path: str | Path, layer: str | None = None) -> AnnData:
    """An AnnData whose counts stay on disk: an ``.h5ad`` file or a ``.zarr`` store.

    ``obs``, ``var`` and ``uns`` are read; the counts (``X`` or ``layers[layer]``) are anndata's
    backed sparse dataset, read by rows when needed. Other layers and ``obsm`` are not read.
    (``anndata.read_h5ad(path, backed="r")`` keeps only ``X`` on disk and loads every layer.)

    Parameters
    ----------
    path
        The file or store.
    layer
        Layer holding the counts; ``None`` uses ``X``.

    Returns
    -------
    AnnData with the counts on disk (in ``X`` or ``layers[layer]``), ``obs``, ``var``, ``uns``.
    """
    from anndata.io import read_elem, sparse_dataset

    p = Path(path)
    if not p.exists():
        raise PerturbFlowError(f"file not found: {path}")
    try:
        if p.is_dir():
            import zarr

            store = zarr.open(str(p), mode="r")
        else:
            import h5py

            store = h5py.File(p, "r")
        obs, var = read_elem(store["obs"]), read_elem(store["var"])
        uns = read_elem(store["uns"]) if "uns" in store else {}
    except Exception as exc:  # noqa: BLE001 (h5py, zarr and anndata raise many kinds for a bad file)
        kind = "folder (.zarr store)" if p.is_dir() else ".h5ad file"
        raise PerturbFlowError(f"{path} is not a readable {kind} ({type(exc).__name__})") from None
    where = "X" if layer is None else f"layers/{layer}"
    if where not in store:
        if layer is None:
            raise PerturbFlowError(f"{path} has no X; pass the layer holding the counts")
        known = ", ".join(store["layers"].keys()) if "layers" in store else "none"
        raise PerturbFlowError(f"layer {layer!r} not found in {path} (layers: {known})")
    node = store[where]
    if node.attrs.get("encoding-type") in ("csr_matrix", "csc_matrix"):
        counts = sparse_dataset(node)
    else:  # dense counts are rare and not read by rows here: loaded whole
        counts = read_elem(node)
    check_readable_by_rows(counts)
    if layer is None:
        return AnnData(X=counts, obs=obs, var=var, uns=uns)
    return AnnData(obs=obs, var=var, uns=uns, layers={layer: counts})
