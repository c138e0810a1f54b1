"""Score a prediction against real cells, one row per (perturbation, context)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from sklearn.decomposition import PCA

from perturbflow._errors import PerturbFlowError
from perturbflow.data import get_counts, parse_perturbation
from perturbflow.data._expression import dense_rows, group_means, log_normalize_rows
from perturbflow.metrics._de import de_overlap, top_de_genes
from perturbflow.metrics._distances import energy_distance, energy_floor, mmd_rbf
from perturbflow.metrics._groups import (
    as_key_list,
    canonical_labels,
    cell_contexts,
    check_obs_key,
    group_codes,
)
from perturbflow.metrics._likelihood import (
    DISPERSION_KEY,
    nb_log_likelihood,
    predicted_profile,
)
from perturbflow.metrics._metrics import (
    discrimination_score_l1,
    mae,
    mse,
    pearson_delta,
)

logger = logging.getLogger(__name__)

_MAX_PCA_CELLS = 10_000
_MIN_DE_CELLS = 2


def _aligned_pred_counts(
    adata_pred: AnnData, adata_real: AnnData, pred_layer: str | None
) -> tuple[np.ndarray | sp.spmatrix, np.ndarray]:
    """The prediction's counts and the column order that puts them in the real gene order."""
    real_genes, pred_genes = adata_real.var_names, adata_pred.var_names
    if pred_genes.has_duplicates:
        raise PerturbFlowError("prediction has duplicated gene names")
    missing = real_genes.difference(pred_genes)
    extra = pred_genes.difference(real_genes)
    if len(missing) or len(extra):
        raise PerturbFlowError(
            f"prediction genes differ from the real genes: {len(missing)} real genes missing "
            f"from the prediction, {len(extra)} prediction genes not in the real data"
        )
    counts = get_counts(adata_pred, pred_layer)
    order = pred_genes.get_indexer(real_genes)
    return counts, order


def _sample(rows: np.ndarray, max_cells: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_cells is None or rows.size <= max_cells:
        return rows
    return np.sort(rng.choice(rows, size=max_cells, replace=False))


def _fit_pca(
    X_log: np.ndarray | sp.spmatrix,
    rows: np.ndarray,
    n_pcs: int,
    rng: np.random.Generator,
    seed: int,
) -> PCA | None:
    """PCA of (at most 10,000 sampled) given rows; ``None`` when there are too few."""
    rows = _sample(rows, _MAX_PCA_CELLS, rng)
    n_components = min(n_pcs, rows.size - 1, X_log.shape[1])
    if n_components < 1:
        return None
    # the covariance route is exact and fast for few genes; randomized SVD scales to many
    solver = "covariance_eigh" if X_log.shape[1] <= 1000 else "randomized"
    pca = PCA(n_components=n_components, svd_solver=solver, random_state=seed)
    return pca.fit(dense_rows(X_log, rows))


def _metric_columns(n_de_genes: int) -> list[str]:
    top = f"top{n_de_genes}"
    return [
        "pearson_delta",
        f"pearson_delta_{top}",
        "pearson_delta_systema",
        f"mse_{top}",
        f"mae_{top}",
        "discrimination_l1",
        "de_overlap",
        "energy_distance",
        "energy_floor",
        "mmd",
        "nb_loglik",
    ]


def _score_group(
    pred_mean: np.ndarray,
    real_mean: np.ndarray,
    ctrl_mean: np.ndarray,
    systema_ref: np.ndarray,
    pred_X: np.ndarray,
    real_X: np.ndarray,
    ctrl_X: np.ndarray,
    pca: PCA | None,
    n_de_genes: int,
    alpha: float,
) -> dict[str, float]:
    """Every metric of one (perturbation, context) but discrimination, NaN where undefined."""
    cols = _metric_columns(n_de_genes)
    out = dict.fromkeys(cols, float("nan"))
    out["pearson_delta"] = pearson_delta(pred_mean, real_mean, ctrl_mean)
    out["pearson_delta_systema"] = pearson_delta(pred_mean, real_mean, systema_ref)
    if len(real_X) >= _MIN_DE_CELLS and len(ctrl_X) >= _MIN_DE_CELLS:
        top = top_de_genes(real_X, ctrl_X, n=n_de_genes)
        out[cols[1]] = pearson_delta(pred_mean, real_mean, ctrl_mean, genes=top)
        out[cols[3]] = mse(pred_mean, real_mean, genes=top)
        out[cols[4]] = mae(pred_mean, real_mean, genes=top)
        if len(pred_X) >= _MIN_DE_CELLS:
            out["de_overlap"] = de_overlap(pred_X, real_X, ctrl_X, alpha=alpha)
    if pca is not None:
        z_pred, z_real = pca.transform(pred_X), pca.transform(real_X)  # (n, n_pcs)
        out["energy_distance"] = energy_distance(z_pred, z_real)
        if len(z_real) >= 2:  # what a perfect prediction of as many cells would score
            out["energy_floor"] = energy_floor(len(z_pred), z_real)
        out["mmd"] = mmd_rbf(z_pred, z_real)
    return out


def evaluate_predictions(
    adata_pred: AnnData,
    adata_real: AnnData,
    perturbation_key: str,
    control_value: str,
    context_keys: str | Sequence[str] | None = None,
    real_layer: str | None = None,
    pred_layer: str | None = None,
    n_de_genes: int = 20,
    n_pcs: int = 30,
    seed: int = 0,
    *,
    alpha: float = 0.05,
    max_cells: int | None = 2000,
) -> pd.DataFrame:
    """Score predicted cells against real cells of the same perturbation and context.

    Both AnnData hold counts (``X`` or a layer); every metric is computed on
    ``log1p(normalize_total(counts, 1e4))``. Deltas are always taken against the mean of the
    **real** control cells of the same context, never against predicted cells. Perturbation
    labels are matched by their set of atoms (``B+A`` matches ``A+B``, ``A+ctrl`` matches
    ``A``). Predicted control cells are ignored.

    Parameters
    ----------
    adata_pred
        Predicted cells: counts, ``obs[perturbation_key]`` and the context columns.
    adata_real
        Real cells with the same genes (the prediction is reordered to the real gene order),
        including the control cells of each evaluated context.
    perturbation_key
        Column of ``obs`` holding perturbation labels, in both AnnData.
    control_value
        Label of control cells.
    context_keys
        Columns of ``obs`` defining the context (cell type, ...); ``None`` for one context
        called ``"all"``.
    real_layer, pred_layer
        Layers holding the counts; ``None`` uses ``X``.
    n_de_genes
        Number of top DE genes (t-test of real perturbed vs real control) for the ``top``
        metrics.
    n_pcs
        Principal components (fitted on the real cells of each context) in which the energy
        distance and the MMD are computed; predicted cells are projected into them.
    seed
        Seed of the cell subsampling and of the PCA solver.
    alpha
        False discovery rate of the true DE genes of ``de_overlap``.
    max_cells
        At most this many cells per group (and of the control) enter the DE tests and the
        distribution distances, sampled with ``seed``; means always use all cells. ``None``
        uses all cells.

    Returns
    -------
    One row per (perturbation, context) present in both, control excluded, with columns
    ``perturbation`` (the real label), ``context``, ``n_pred``, ``n_real``, ``pearson_delta``
    (all genes), ``pearson_delta_top{n}``, ``pearson_delta_systema`` (delta against the mean
    of all real perturbed cells of the context), ``mse_top{n}``, ``mae_top{n}`` (on mean
    profiles), ``discrimination_l1`` (among the perturbations of the context; perturbed genes
    excluded), ``de_overlap``, ``energy_distance``, ``energy_floor`` (the energy distance a
    perfect prediction of as many cells would have in expectation, see
    :func:`~perturbflow.metrics.energy_floor`), ``mmd`` (RBF, biased MMD²), and ``nb_loglik``
    (held-out NB log-likelihood of the real cells under the predicted profile, nats per cell;
    only for predictions with ``var['nb_dispersion']``, see
    :mod:`perturbflow.metrics._likelihood`; NaN otherwise). The DE-based
    metrics are NaN for groups (or controls) of fewer than 2 cells, ``de_overlap`` also when no
    gene is truly DE; use :func:`summarize` for NaN-ignoring means.
    """
    context_keys = as_key_list(context_keys)
    for key in [perturbation_key, *context_keys]:
        check_obs_key(adata_real, key, "key", "real AnnData")
        check_obs_key(adata_pred, key, "key", "predicted AnnData")
    if n_de_genes < 1 or n_pcs < 1:
        raise PerturbFlowError("n_de_genes and n_pcs must be at least 1")
    pred_counts, order = _aligned_pred_counts(adata_pred, adata_real, pred_layer)
    real_counts = get_counts(adata_real, real_layer)
    real_log = log_normalize_rows(real_counts)
    theta = None
    if DISPERSION_KEY in adata_pred.var.columns:  # a model with an NB likelihood
        theta = adata_pred.var[DISPERSION_KEY].to_numpy(dtype=np.float64)[order]
    pred_log = log_normalize_rows(pred_counts)[:, order]
    genes = adata_real.var_names
    rng = np.random.default_rng(seed)

    real_pert = canonical_labels(adata_real.obs[perturbation_key], control_value)
    pred_pert = canonical_labels(adata_pred.obs[perturbation_key], control_value)
    real_ctx = cell_contexts(adata_real, context_keys)
    real_codes, real_groups = group_codes(real_pert, real_ctx)
    pred_codes, pred_groups = group_codes(pred_pert, cell_contexts(adata_pred, context_keys))
    real_means = group_means(real_log, real_codes, len(real_groups))
    pred_means = group_means(pred_log, pred_codes, len(pred_groups))
    real_index = {g: i for i, g in enumerate(real_groups)}
    pred_index = {g: i for i, g in enumerate(pred_groups)}
    labels = adata_real.obs[perturbation_key].astype(str).to_numpy()
    real_label = pd.Series(labels).groupby(real_pert, sort=False).first().to_dict()  # 1st spelling

    shared = sorted(g for g in pred_groups if g[0] != control_value and g in real_index)
    dropped = sum(1 for g in pred_groups if g[0] != control_value and g not in real_index)
    if dropped:
        logger.info("%d predicted (perturbation, context) groups have no real cells", dropped)
    rows: list[dict] = []
    for context in sorted({c for _, c in shared}):
        ctrl_group = real_index.get((control_value, context))
        if ctrl_group is None:
            logger.warning("context %r has no real control cells; it is skipped", context)
            continue
        ctx_rows = np.flatnonzero(real_ctx == context)
        ctrl_rows = np.flatnonzero(real_codes == ctrl_group)
        ctrl_mean = real_means[ctrl_group]
        pert_rows = np.setdiff1d(ctx_rows, ctrl_rows)
        systema_ref = np.asarray(real_log[pert_rows].mean(axis=0), dtype=np.float64).ravel()
        ctrl_X = dense_rows(real_log, _sample(ctrl_rows, max_cells, rng))
        pca = _fit_pca(real_log, ctx_rows, n_pcs, rng, seed)
        ctx_rows_out: dict[str, dict] = {}
        pred_ctx_means, real_ctx_means, exclude = {}, {}, {}
        for pert in (p for p, c in shared if c == context):
            r_group, p_group = real_index[(pert, context)], pred_index[(pert, context)]
            r_rows = np.flatnonzero(real_codes == r_group)
            p_rows = np.flatnonzero(pred_codes == p_group)
            real_mean, pred_mean = real_means[r_group], pred_means[p_group]
            real_X = dense_rows(real_log, _sample(r_rows, max_cells, rng))
            pred_X = dense_rows(pred_log, _sample(p_rows, max_cells, rng))
            row = {
                "perturbation": real_label[pert],
                "context": context,
                "n_pred": int(p_rows.size),
                "n_real": int(r_rows.size),
                **_score_group(
                    pred_mean, real_mean, ctrl_mean, systema_ref, pred_X, real_X, ctrl_X, pca,
                    n_de_genes=n_de_genes, alpha=alpha,
                ),
            }
            if theta is not None:
                profile = predicted_profile(pred_counts[p_rows][:, order])
                row["nb_loglik"] = nb_log_likelihood(real_counts[_sample(r_rows, max_cells, rng)], profile, theta)
            ctx_rows_out[pert] = row
            pred_ctx_means[pert], real_ctx_means[pert] = pred_mean, real_mean
            atoms = [a for a in parse_perturbation(pert, control_value) if a in genes]
            exclude[pert] = genes.get_indexer(atoms)
        disc = discrimination_score_l1(
            pred_ctx_means, real_ctx_means, ctrl_mean, ctrl_mean, exclude=exclude
        )
        for pert, row in ctx_rows_out.items():
            row["discrimination_l1"] = disc[pert]
            rows.append(row)
    columns = ["perturbation", "context", "n_pred", "n_real", *_metric_columns(n_de_genes)]
    return pd.DataFrame(rows, columns=columns)


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Mean of every metric, per model when ``table`` has a ``model`` column.

    Parameters
    ----------
    table
        Output of :func:`evaluate_predictions`, possibly several concatenated with a
        ``model`` column naming the predictor of each row.

    Returns
    -------
    One row per model (index ``model``; a single row ``all`` without that column) with the
    NaN-ignoring mean of each metric column and ``n_groups``, the number of rows averaged.
    """
    skip = {"perturbation", "context", "model", "n_pred", "n_real"}
    metrics = [
        c for c in table.columns if c not in skip and pd.api.types.is_numeric_dtype(table[c])
    ]
    if "model" in table.columns:
        grouped = table.groupby("model", sort=False)
        out = grouped[metrics].mean()
        out.insert(0, "n_groups", grouped.size())
        return out
    out = table[metrics].mean().to_frame().T
    out.insert(0, "n_groups", len(table))
    out.index = pd.Index(["all"], name="model")
    return out
