"""``pf.pl.embedding``: predicted and real cells on one embedding."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData

from perturbflow._errors import PerturbFlowError
from perturbflow._threads import preserve_torch_threads
from perturbflow.metrics import log_normalize
from perturbflow.metrics._groups import canonical_labels
from perturbflow.pl._utils import finish

SOURCE_KEY = "source"
GROUP_KEY = "group"


def _subsample(n: int, max_cells: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_cells is None or n <= max_cells:
        return np.arange(n)
    return np.sort(rng.choice(n, max_cells, replace=False))


@preserve_torch_threads()
def embedding(
    adata_pred: AnnData,
    adata_real: AnnData,
    *,
    basis: Literal["umap", "pca"] = "umap",
    color: str | Sequence[str] | None = None,
    perturbation_key: str | None = None,
    control_value: str | None = None,
    real_layer: str | None = "counts",
    subset_real: bool = True,
    max_cells: int | None = 4000,
    n_pcs: int = 30,
    n_neighbors: int = 15,
    seed: int = 0,
    ax: plt.Axes | Sequence[plt.Axes] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Sequence[plt.Axes] | None:
    """Predicted and real cells on one UMAP (or PCA), coloured by source and perturbation.

    Both sets of counts are log1p-normalised (10,000 per cell) over their shared genes,
    concatenated, and embedded together with scanpy (``pp.pca``, then ``pp.neighbors`` and
    ``tl.umap``), so a good prediction lands on the real cells of the same perturbation.

    Parameters
    ----------
    adata_pred
        Predicted cells (counts in ``X``), e.g. from :func:`perturbflow.tl.predict`.
    adata_real
        Real cells (counts in ``layers[real_layer]`` or ``X``).
    basis
        ``"umap"`` or ``"pca"``.
    color
        ``obs`` columns of the combined cells to colour by, one panel each: ``"source"``
        (``real`` / ``predicted``), the perturbation key, ``"group"`` (perturbation and
        source, e.g. ``"A+B (predicted)"``), or a context column present in both.
        Default: source and perturbation.
    perturbation_key, control_value
        Default: those recorded in the prediction.
    real_layer
        Layer of the real counts (``None`` for ``X``; falls back to ``X`` when absent).
    subset_real
        Keep only the real cells of the predicted perturbations and the control cells.
    max_cells
        Cells drawn (seeded) from each of the two sets at most, to keep the embedding quick.
    n_pcs, n_neighbors
        Principal components and neighbours of the embedding.
    seed
        Seed of the subsampling, PCA and UMAP.
    ax
        Axes to draw into, one per colour.
    show, save
        Show the figure; save it to this path.

    Returns
    -------
    The axes (one per colour), unless ``show`` is true. Neither AnnData is modified; the
    figure is saved to ``save`` when given.
    """
    import scanpy as sc

    info = dict(adata_pred.uns.get("perturbflow_prediction", {}))
    key = perturbation_key or info.get("perturbation_key")
    control = control_value or info.get("control_value")
    if key is None or control is None:
        raise PerturbFlowError("pass perturbation_key and control_value")
    for which, a in (("predicted", adata_pred), ("real", adata_real)):
        if key not in a.obs.columns:
            raise PerturbFlowError(f"key {key!r} not found in the {which} AnnData's obs")
    if key in (SOURCE_KEY, GROUP_KEY):
        raise PerturbFlowError(f"perturbation key {key!r} clashes with a column the plot adds; rename it")
    if basis not in ("umap", "pca"):
        raise PerturbFlowError(f"basis must be 'umap' or 'pca', not {basis!r}")
    if real_layer is not None and real_layer not in adata_real.layers:
        real_layer = None
    genes = adata_pred.var_names[adata_pred.var_names.isin(adata_real.var_names)]
    if len(genes) < 2:
        raise PerturbFlowError("the predicted and real AnnData share fewer than 2 genes")

    pred_labels = canonical_labels(adata_pred.obs[key], control)
    real_labels = canonical_labels(adata_real.obs[key], control)
    keep = np.ones(adata_real.n_obs, dtype=bool)
    if subset_real:
        keep = np.isin(real_labels, [*pd.unique(pred_labels), control])
    real_rows = np.flatnonzero(keep)
    rng = np.random.default_rng(seed)
    pred_rows = _subsample(adata_pred.n_obs, max_cells, rng)
    real_rows = real_rows[_subsample(len(real_rows), max_cells, rng)]
    if len(real_rows) == 0:
        raise PerturbFlowError("no real cells of the predicted perturbations or the control")

    pred = adata_pred[pred_rows][:, genes]
    real = adata_real[real_rows][:, genes]
    X = np.vstack([log_normalize(pred), log_normalize(real, layer=real_layer)])  # (n_pred + n_real, G)
    obs = pd.DataFrame(
        {
            SOURCE_KEY: pd.Categorical(["predicted"] * len(pred_rows) + ["real"] * len(real_rows)),
            key: pd.Categorical(np.concatenate([pred_labels[pred_rows], real_labels[real_rows]])),
        },
        index=[f"cell{i}" for i in range(X.shape[0])],
    )
    obs[GROUP_KEY] = pd.Categorical(obs[key].astype(str) + " (" + obs[SOURCE_KEY].astype(str) + ")")
    for extra in info.get("context_keys", []):
        if extra in adata_pred.obs.columns and extra in adata_real.obs.columns and extra not in obs.columns:
            pred_values = adata_pred.obs[extra].astype(str).to_numpy()[pred_rows]
            real_values = adata_real.obs[extra].astype(str).to_numpy()[real_rows]
            obs[extra] = pd.Categorical(np.concatenate([pred_values, real_values]))
    combined = AnnData(X=X, obs=obs, var=pd.DataFrame(index=genes.astype(str)))
    n_comps = max(2, min(n_pcs, combined.n_vars - 1, combined.n_obs - 1))
    sc.pp.pca(combined, n_comps=n_comps, random_state=seed)
    if basis == "umap":
        sc.pp.neighbors(combined, n_neighbors=n_neighbors, use_rep="X_pca", random_state=seed)
        sc.tl.umap(combined, random_state=seed)

    colors = [SOURCE_KEY, key] if color is None else [color] if isinstance(color, str) else list(color)
    unknown = [c for c in colors if c not in combined.obs.columns]
    if unknown:
        raise PerturbFlowError(f"cannot colour by {unknown}; choose from {list(combined.obs.columns)}")
    if ax is None:
        _, axes = plt.subplots(1, len(colors), figsize=(4.6 * len(colors), 4), squeeze=False)
        ax = list(axes[0])
    elif not isinstance(ax, Sequence | np.ndarray):
        ax = [ax]
    for a, c in zip(ax, colors):
        sc.pl.embedding(combined, basis=basis, color=c, ax=a, show=False, frameon=False, size=12, title=c)
    return finish(list(ax), show, save)
