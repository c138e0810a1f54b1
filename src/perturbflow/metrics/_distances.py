"""Distribution-level distances between two sets of cells: energy distance and RBF MMD.

Both are V-statistics (all pairs, the diagonal included) computed in row blocks so memory
stays bounded for thousands of cells.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.spatial.distance import cdist

from perturbflow._errors import PerturbFlowError

_BLOCK_ENTRIES = 2_000_000  # pairwise entries held at once
_MEDIAN_POINTS = 1000  # points used for the median heuristic


def _as_cells(X: np.ndarray, name: str) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2 or X.shape[0] == 0:
        raise PerturbFlowError(f"{name} must be a non-empty cells-by-features array, got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise PerturbFlowError(f"{name} contains NaN or infinite values")
    return X


def _mean_pairwise(
    X: np.ndarray, Y: np.ndarray, metric: str, transform: Callable[[np.ndarray], np.ndarray]
) -> float:
    """``mean_{i,j} transform(metric(x_i, y_j))`` over all pairs, in row blocks."""
    block = max(1, _BLOCK_ENTRIES // max(1, Y.shape[0]))
    total = 0.0
    for start in range(0, X.shape[0], block):
        total += float(transform(cdist(X[start : start + block], Y, metric=metric)).sum())
    return total / (X.shape[0] * Y.shape[0])


def _identity(d: np.ndarray) -> np.ndarray:
    return d


def energy_distance(X: np.ndarray, Y: np.ndarray) -> float:
    """Energy distance (Székely's E-statistic) between two samples, Euclidean.

    ``E = 2 E|X - Y| - E|X - X'| - E|Y - Y'|`` with every expectation the mean over all pairs
    of the empirical samples (a V-statistic, the zero diagonal included); this is the
    ``edistance`` of cell-eval and scPerturb. In one dimension
    ``scipy.stats.energy_distance(x, y) == sqrt(E)``.

    Parameters
    ----------
    X, Y
        Samples, cells by features (1-D arrays are one feature).

    Returns
    -------
    ``E >= 0`` (up to rounding); 0 for identical samples.
    """
    X, Y = _as_cells(X, "X"), _as_cells(Y, "Y")
    if X.shape[1] != Y.shape[1]:
        raise PerturbFlowError(f"X and Y have different features: {X.shape[1]} vs {Y.shape[1]}")
    xy = _mean_pairwise(X, Y, "euclidean", _identity)
    xx = _mean_pairwise(X, X, "euclidean", _identity)
    yy = _mean_pairwise(Y, Y, "euclidean", _identity)
    return float(2.0 * xy - xx - yy)


def energy_floor(n: int, Y: np.ndarray) -> float:
    """Expected :func:`energy_distance` of a perfect prediction of ``n`` cells against ``Y``.

    For independent samples of sizes ``n`` and ``m`` from one distribution whose points lie
    ``δ = E|Y - Y'|`` apart on average, the V-statistic has expectation
    ``E = δ (1/n + 1/m)``, not 0: the zero diagonal of each within-sample term makes it
    small by ``δ/n`` and ``δ/m``. ``δ`` is estimated without bias by the mean distance over
    the distinct pairs of ``Y``. A prediction whose energy distance is near this floor
    cannot be told from new cells of the real distribution at these sample sizes.

    Parameters
    ----------
    n
        Cells of the prediction.
    Y
        The real cells, cells by features (at least 2).

    Returns
    -------
    The floor ``δ (1/n + 1/m)``.
    """
    Y = _as_cells(Y, "Y")
    m = Y.shape[0]
    if n < 1 or m < 2:
        raise PerturbFlowError(f"the energy floor needs n >= 1 predicted and m >= 2 real cells, got {n} and {m}")
    delta = _mean_pairwise(Y, Y, "euclidean", _identity) * m / (m - 1)  # distinct pairs only
    return float(delta * (1.0 / n + 1.0 / m))


def median_sq_distance(Z: np.ndarray) -> float:
    """Median squared Euclidean distance between distinct points of ``Z``.

    Uses at most 1000 evenly spaced points, so the result is deterministic; falls back to 1
    when all those points coincide.
    """
    Z = _as_cells(Z, "Z")
    if Z.shape[0] > _MEDIAN_POINTS:
        Z = Z[np.linspace(0, Z.shape[0] - 1, _MEDIAN_POINTS).astype(int)]
    d2 = cdist(Z, Z, metric="sqeuclidean")[np.triu_indices(Z.shape[0], k=1)]
    med = float(np.median(d2)) if d2.size else 0.0
    return med if med > 0 else 1.0


def mmd_rbf(
    X: np.ndarray,
    Y: np.ndarray,
    scales: Sequence[float] = (0.5, 1.0, 2.0, 5.0, 10.0),
    bandwidth: float | None = None,
) -> float:
    """Squared maximum mean discrepancy with a mixture of Gaussian (RBF) kernels.

    The kernel is the mean of ``k_s(x, y) = exp(-|x - y|^2 / (s * h))`` over the scales
    ``s``, where ``h`` is ``bandwidth`` or, by default, the median squared distance between
    points of the pooled sample (median heuristic). The biased estimate (V-statistic,
    Gretton et al. 2012, eq. 5) is

    ``MMD^2 = mean k(x, x') + mean k(y, y') - 2 mean k(x, y)``

    over all pairs, diagonals included, so it is non-negative and 0 for identical samples.

    Parameters
    ----------
    X, Y
        Samples, cells by features (1-D arrays are one feature).
    scales
        Multipliers of ``h``; several scales make the kernel sensitive at several ranges.
    bandwidth
        Base squared length ``h``; ``None`` uses the median heuristic on ``X`` and ``Y``.

    Returns
    -------
    ``MMD^2`` (biased), a float.
    """
    X, Y = _as_cells(X, "X"), _as_cells(Y, "Y")
    if X.shape[1] != Y.shape[1]:
        raise PerturbFlowError(f"X and Y have different features: {X.shape[1]} vs {Y.shape[1]}")
    scales = np.asarray(scales, dtype=np.float64)
    if scales.size == 0 or np.any(scales <= 0):
        raise PerturbFlowError("scales must be positive and non-empty")
    h = median_sq_distance(np.vstack([X, Y])) if bandwidth is None else float(bandwidth)
    if h <= 0:
        raise PerturbFlowError(f"bandwidth must be positive, got {h}")
    gammas = 1.0 / (scales * h)

    def kernel(d2: np.ndarray) -> np.ndarray:
        return np.mean([np.exp(-g * d2) for g in gammas], axis=0)

    xx = _mean_pairwise(X, X, "sqeuclidean", kernel)
    yy = _mean_pairwise(Y, Y, "sqeuclidean", kernel)
    xy = _mean_pairwise(X, Y, "sqeuclidean", kernel)
    return float(xx + yy - 2.0 * xy)
