"""Differential expression of perturbed against control cells, through scanpy.

Both functions take log-normalised cells-by-genes matrices (see :func:`log_normalize`) and
run :func:`scanpy.tl.rank_genes_groups` of the perturbed group against the control group as
the reference, so scores and p-values are exactly scanpy's.
"""

from __future__ import annotations

import warnings
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from perturbflow._errors import PerturbFlowError

_PERT, _CTRL = "perturbed", "__control__"


def _dense(X: np.ndarray | sp.spmatrix) -> np.ndarray:
    return (X.toarray() if sp.issparse(X) else np.asarray(X)).astype(np.float64)


def _rank_groups(
    groups: dict[str, np.ndarray | sp.spmatrix],
    ctrl_X: np.ndarray | sp.spmatrix,
    method: Literal["t-test", "wilcoxon"],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Score every gene of each group against the control with one scanpy call.

    scanpy tests each group against the reference separately (a Wilcoxon ranks the group
    together with the reference only), so one call equals one call per group.
    """
    ctrl = _dense(ctrl_X)
    mats = {name: _dense(X) for name, X in groups.items()}
    for name, X in mats.items():
        if X.ndim != 2 or ctrl.ndim != 2 or X.shape[1] != ctrl.shape[1]:
            raise PerturbFlowError(
                f"{name} and control matrices must be 2-D with equal genes: {X.shape}, {ctrl.shape}"
            )
        if X.shape[0] < 2:
            raise PerturbFlowError(f"differential expression needs at least 2 {name} cells")
    if ctrl.shape[0] < 2:
        raise PerturbFlowError("differential expression needs at least 2 control cells")
    n_genes = ctrl.shape[1]
    labels = [name for name, X in mats.items() for _ in range(X.shape[0])] + [_CTRL] * len(ctrl)
    adata = ad.AnnData(
        X=np.vstack([*mats.values(), ctrl]),
        obs=pd.DataFrame(
            {"group": pd.Categorical(labels)}, index=[str(i) for i in range(len(labels))]
        ),
        var=pd.DataFrame(index=[str(i) for i in range(n_genes)]),
    )
    adata.uns["log1p"] = {"base": None}  # the data are log1p-transformed: silences scanpy's check
    with warnings.catch_warnings():
        # scanpy warns on fold changes of genes absent from a group; harmless here
        warnings.simplefilter("ignore", RuntimeWarning)
        sc.tl.rank_genes_groups(
            adata,
            groupby="group",
            groups=list(mats),
            reference=_CTRL,
            method=method,
            n_genes=n_genes,
            corr_method="benjamini-hochberg",
        )
    res = adata.uns["rank_genes_groups"]
    out = {}
    for name in mats:
        order = np.asarray(res["names"][name]).astype(int)
        scores, pvals_adj = np.empty(n_genes), np.empty(n_genes)
        scores[order] = np.asarray(res["scores"][name], dtype=np.float64)
        pvals_adj[order] = np.asarray(res["pvals_adj"][name], dtype=np.float64)
        out[name] = (scores, pvals_adj)
    return out


def rank_genes(
    pert_X: np.ndarray | sp.spmatrix,
    ctrl_X: np.ndarray | sp.spmatrix,
    method: Literal["t-test", "wilcoxon"] = "wilcoxon",
) -> tuple[np.ndarray, np.ndarray]:
    """Score every gene of perturbed against control cells with scanpy.

    Parameters
    ----------
    pert_X, ctrl_X
        Log-normalised expression of the perturbed and of the control cells (same genes).
    method
        ``"t-test"`` (Welch, scanpy's ``t-test``) or ``"wilcoxon"`` (rank-sum).

    Returns
    -------
    ``(scores, pvals_adj)``, each of shape ``(n_genes,)`` in gene order; ``pvals_adj`` are
    Benjamini-Hochberg adjusted. scanpy sets the score of a gene without variance to 0 and its
    p-value to 1.
    """
    return _rank_groups({_PERT: pert_X}, ctrl_X, method)[_PERT]


def _order(
    scores: np.ndarray, pvals_adj: np.ndarray | None = None, effect: np.ndarray | None = None
) -> np.ndarray:
    """Gene indices, most significant first.

    Sorted by adjusted p-value (if given), then by absolute score, then by absolute effect (if
    given), then by gene index.
    """
    n = scores.size
    keys = [np.arange(n)]
    if effect is not None:
        keys.append(-np.abs(effect))
    keys.append(-np.nan_to_num(np.abs(scores), nan=-1.0))
    if pvals_adj is not None:
        keys.append(np.nan_to_num(pvals_adj, nan=1.0))
    return np.lexsort(keys)


def top_de_genes(
    real_pert_X: np.ndarray | sp.spmatrix,
    real_ctrl_X: np.ndarray | sp.spmatrix,
    n: int = 20,
) -> np.ndarray:
    """The ``n`` genes most changed by a perturbation (scanpy t-test, largest absolute score).

    Parameters
    ----------
    real_pert_X, real_ctrl_X
        Log-normalised expression of the real perturbed cells and of the real control cells of
        the same context.
    n
        Number of genes.

    Returns
    -------
    Integer gene indices, most changed first (``min(n, n_genes)`` of them).
    """
    if n < 1:
        raise PerturbFlowError(f"n must be at least 1, got {n}")
    scores, _ = rank_genes(real_pert_X, real_ctrl_X, method="t-test")
    return _order(scores)[:n]


def de_overlap(
    pred_pert_X: np.ndarray | sp.spmatrix,
    real_pert_X: np.ndarray | sp.spmatrix,
    ctrl_X: np.ndarray | sp.spmatrix,
    alpha: float = 0.05,
) -> float:
    """Fraction of the truly differentially expressed genes that the prediction recovers.

    The real perturbed cells and the predicted cells are each tested against the same real
    control cells (scanpy Wilcoxon rank-sum, Benjamini-Hochberg). The true DE set ``T`` is the
    genes with real ``pvals_adj < alpha``; with ``k = |T|``, the prediction's top ``k`` genes
    ``P_k`` (ranked by its adjusted p-value, ties by absolute score, then by the absolute
    difference of mean expression from the control) give ``overlap = |P_k ∩ T| / k``,
    cell-eval's ``overlap_at_N`` with N the number of true DE genes. The last tie-break matters
    for predictions made by shifting the control cells themselves: every shifted gene then
    separates perfectly from the control and has the same p-value and score.

    Parameters
    ----------
    pred_pert_X
        Log-normalised expression of the predicted cells of the perturbation.
    real_pert_X
        Log-normalised expression of the real perturbed cells.
    ctrl_X
        Log-normalised expression of the real control cells of the same context.
    alpha
        False discovery rate defining the true DE genes.

    Returns
    -------
    The overlap in ``[0, 1]``, NaN when no gene is truly DE.
    """
    ranked = _rank_groups({"real": real_pert_X, "predicted": pred_pert_X}, ctrl_X, "wilcoxon")
    true_de = np.flatnonzero(ranked["real"][1] < alpha)
    if true_de.size == 0:
        return float("nan")
    pred_scores, pred_p = ranked["predicted"]
    effect = _dense(pred_pert_X).mean(axis=0) - _dense(ctrl_X).mean(axis=0)
    top_pred = _order(pred_scores, pred_p, effect)[: true_de.size]
    return float(np.intersect1d(top_pred, true_de).size / true_de.size)
