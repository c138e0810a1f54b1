"""``pf.pl.delta_scatter``: predicted against observed change of expression, per gene."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData

from perturbflow._errors import PerturbFlowError
from perturbflow._threads import preserve_torch_threads
from perturbflow.metrics import log_normalize, top_de_genes
from perturbflow.metrics._groups import canonical_labels
from perturbflow.pl._utils import finish


@preserve_torch_threads()
def delta_scatter(
    adata_pred: AnnData,
    adata_real: AnnData,
    perturbation: str,
    *,
    perturbation_key: str | None = None,
    control_value: str | None = None,
    real_layer: str | None = "counts",
    n_labels: int = 10,
    ax: plt.Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> plt.Axes | None:
    """Scatter of predicted against observed mean change (log1p-normalised) for one perturbation.

    Both changes are taken against the **real** control cells; the top DE genes of the real
    cells are labelled.

    Parameters
    ----------
    adata_pred
        Predicted cells (counts in ``X``).
    adata_real
        Real cells with the control cells and the cells of ``perturbation``.
    perturbation
        The perturbation to show.
    perturbation_key, control_value
        Default: those recorded in the prediction.
    real_layer
        Layer of the real counts (``None`` for ``X``; falls back to ``X`` when absent).
    n_labels
        Number of top DE genes labelled.
    ax, show, save
        Axes to draw into; show the figure; save it to this path.

    Returns
    -------
    The axes, unless ``show`` is true. Nothing is written into the AnnData; the figure is
    saved to ``save`` when given.
    """
    info = dict(adata_pred.uns.get("perturbflow_prediction", {}))
    key = perturbation_key or info.get("perturbation_key")
    control = control_value or info.get("control_value")
    if key is None or control is None:
        raise PerturbFlowError("pass perturbation_key and control_value")
    if real_layer is not None and real_layer not in adata_real.layers:
        real_layer = None
    target = canonical_labels([perturbation], control)[0]
    real_lab = canonical_labels(adata_real.obs[key], control)
    pred_lab = canonical_labels(adata_pred.obs[key], control)
    if not (real_lab == target).any() or not (pred_lab == target).any():
        raise PerturbFlowError(f"{perturbation!r} must be present in both the prediction and the real data")
    real_pert = log_normalize(adata_real[real_lab == target], layer=real_layer)
    real_ctrl = log_normalize(adata_real[real_lab == control], layer=real_layer)
    pred = log_normalize(adata_pred[pred_lab == target][:, adata_real.var_names])
    ctrl_mean = real_ctrl.mean(0)
    observed = real_pert.mean(0) - ctrl_mean
    predicted = pred.mean(0) - ctrl_mean
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(observed, predicted, s=6, color="tab:gray", alpha=0.6, linewidths=0)
    top = top_de_genes(real_pert, real_ctrl, n=n_labels)
    ax.scatter(observed[top], predicted[top], s=12, color="tab:red")
    for g in top:
        ax.annotate(str(adata_real.var_names[g]), (observed[g], predicted[g]), fontsize=6)
    lim = np.abs(np.concatenate([observed, predicted])).max() * 1.05
    ax.plot([-lim, lim], [-lim, lim], color="black", lw=0.5, ls="--")
    r = np.corrcoef(observed, predicted)[0, 1]
    ax.set_xlabel("observed change")
    ax.set_ylabel("predicted change")
    ax.set_title(f"{perturbation} (r = {r:.2f})", fontsize=9)
    return finish(ax, show, save)
