"""Mean-level metrics: Pearson delta, errors on mean profiles, perturbation discrimination.

All functions take mean expression profiles (1-D arrays over genes, log-normalised) and
return plain floats; they never see cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from perturbflow._errors import PerturbFlowError


def _subset(x: np.ndarray, genes: Sequence[int] | np.ndarray | None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    return x if genes is None else x[np.asarray(genes, dtype=int)]


def _check_same_length(*arrays: np.ndarray) -> None:
    sizes = {a.size for a in arrays}
    if len(sizes) != 1:
        raise PerturbFlowError(f"profiles have different lengths: {sorted(sizes)}")


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either vector is constant or has fewer than 2 entries.

    ``r = sum((x - mean x)(y - mean y)) / sqrt(sum (x - mean x)^2 sum (y - mean y)^2)``.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    _check_same_length(x, y)
    if x.size < 2:
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.dot(xc, xc) * np.dot(yc, yc))
    if not np.isfinite(denom) or denom <= 1e-300:
        return float("nan")
    return float(np.clip(np.dot(xc, yc) / denom, -1.0, 1.0))


def pearson_delta(
    pred_mean: np.ndarray,
    real_mean: np.ndarray,
    ref_mean: np.ndarray,
    genes: Sequence[int] | np.ndarray | None = None,
) -> float:
    """Pearson correlation of the predicted and the real change from a reference.

    ``r(pred_mean - ref_mean, real_mean - ref_mean)`` over all genes or over ``genes``. With
    the real control mean as reference this is cell-eval's ``pearson_delta`` when the
    prediction's control cells are the real control cells.

    Parameters
    ----------
    pred_mean, real_mean
        Mean log-normalised expression of the predicted and the real perturbed cells.
    ref_mean
        The reference profile, usually the mean of the real control cells of the context.
    genes
        Indices of the genes to use; ``None`` uses all.

    Returns
    -------
    The correlation, NaN when either delta is constant.
    """
    pred, real, ref = (_subset(v, genes) for v in (pred_mean, real_mean, ref_mean))
    _check_same_length(pred, real, ref)
    return pearson(pred - ref, real - ref)


def mse(a: np.ndarray, b: np.ndarray, genes: Sequence[int] | np.ndarray | None = None) -> float:
    """Mean squared error ``mean((a - b)^2)`` between two mean profiles, optionally on ``genes``."""
    a, b = _subset(a, genes), _subset(b, genes)
    _check_same_length(a, b)
    return float(np.mean((a - b) ** 2)) if a.size else float("nan")


def mae(a: np.ndarray, b: np.ndarray, genes: Sequence[int] | np.ndarray | None = None) -> float:
    """Mean absolute error ``mean(|a - b|)`` between two mean profiles, optionally on ``genes``."""
    a, b = _subset(a, genes), _subset(b, genes)
    _check_same_length(a, b)
    return float(np.mean(np.abs(a - b))) if a.size else float("nan")


def discrimination_score_l1(
    pred_means: Mapping[str, np.ndarray],
    real_means: Mapping[str, np.ndarray],
    pred_ref: np.ndarray | None = None,
    real_ref: np.ndarray | None = None,
    exclude: Mapping[str, Sequence[int] | np.ndarray] | None = None,
) -> dict[str, float]:
    """Perturbation discrimination with the L1 distance (cell-eval's ``discrimination_score_l1``).

    For each perturbation ``p`` the predicted effect ``e_pred(p) = pred_means[p] - pred_ref``
    is compared by L1 distance with the real effects ``e_real(q) = real_means[q] - real_ref``
    of all N perturbations ``q``. With ``rank(p)`` the number of other perturbations whose real
    effect is at least as close as that of ``p`` itself, the score is ``1 - rank(p) / N``: 1 when
    the prediction is closest to its own real profile, ``1/N`` when it is farthest. This is the
    definition in ``cell_eval.metrics._anndata.discrimination_score`` (cell-eval 0.8) which
    ranks with ``argsort`` and reports ``1 - rank / N``; ties, which cell-eval orders by sort
    position, are counted here against the prediction.

    The genes in ``exclude[p]`` (for genetic perturbations the perturbed genes themselves) are
    left out of the distances of ``p``. cell-eval leaves out the gene whose name equals the
    label ``p``; passing the perturbed genes' indices reproduces that for single perturbations.
    With both references ``None`` the profiles are compared directly, which equals comparing
    effects whenever both references are the same vector (L1 distance is shift-invariant).

    Parameters
    ----------
    pred_means, real_means
        Mean profile of each perturbation, predicted and real; the same keys.
    pred_ref, real_ref
        Reference (control) profile subtracted from the predicted and the real means.
    exclude
        Gene indices to leave out, per perturbation.

    Returns
    -------
    Score of each perturbation in ``(0, 1]``; NaN for all when fewer than two perturbations
    are given (nothing to discriminate; cell-eval would report 1).
    """
    keys = sorted(real_means)
    if sorted(pred_means) != keys:
        missing = set(real_means) ^ set(pred_means)
        raise PerturbFlowError(
            f"predicted and real profiles differ in {len(missing)} perturbations, e.g. "
            f"{sorted(missing)[:3]}"
        )
    if len(keys) < 2:
        return {k: float("nan") for k in keys}
    real = np.stack([np.asarray(real_means[k], dtype=np.float64).ravel() for k in keys])
    pred = np.stack([np.asarray(pred_means[k], dtype=np.float64).ravel() for k in keys])
    if real.shape != pred.shape:
        raise PerturbFlowError(f"profiles have different lengths: {real.shape} vs {pred.shape}")
    if real_ref is not None:
        real = real - np.asarray(real_ref, dtype=np.float64).ravel()
    if pred_ref is not None:
        pred = pred - np.asarray(pred_ref, dtype=np.float64).ravel()
    n = len(keys)
    scores: dict[str, float] = {}
    for i, key in enumerate(keys):
        mask = np.ones(real.shape[1], dtype=bool)
        if exclude is not None and key in exclude:
            mask[np.asarray(exclude[key], dtype=int)] = False
        dist = np.abs(real[:, mask] - pred[i, mask]).sum(axis=1)  # (N,)
        rank = int(np.sum(dist <= dist[i])) - 1
        scores[key] = 1.0 - rank / n
    return scores
