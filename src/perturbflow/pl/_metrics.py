"""``pf.pl.metrics``: the model beside the baselines, one panel per metric."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData

from perturbflow._errors import PerturbFlowError
from perturbflow.pl._utils import finish

HEADLINE_METRICS = ("pearson_delta_top20", "mse_top20", "energy_distance")
MODEL_PREFIX = "perturbflow"  # also "perturbflow[dit]" etc. when models are compared
LOWER_IS_BETTER = {"mse_top20", "mae_top20", "energy_distance", "mmd"}


def metrics(
    adata_or_table: AnnData | pd.DataFrame,
    metrics: Sequence[str] = HEADLINE_METRICS,
    *,
    key: str = "perturbflow_evaluation",
    ax: Sequence[plt.Axes] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Sequence[plt.Axes] | None:
    """Bar charts of the mean of each metric per model (the model, baselines, noise ceiling).

    Parameters
    ----------
    adata_or_table
        The table of :func:`perturbflow.tl.evaluate`, or the AnnData it was written into.
    metrics
        Columns of the table to plot, one panel each.
    key
        Key of ``.uns`` holding the evaluation when an AnnData is given.
    ax
        Axes to draw into, one per metric.
    show, save
        Show the figure; save it to this path.

    Returns
    -------
    The axes (one per metric), unless ``show`` is true. Nothing is written into the
    AnnData; the figure is saved to ``save`` when given.
    """
    table = adata_or_table
    if isinstance(table, AnnData):
        if key not in table.uns:
            raise PerturbFlowError(f"no evaluation in .uns[{key!r}]; run pf.tl.evaluate first")
        table = table.uns[key]["table"]
    missing = [m for m in metrics if m not in table.columns]
    if missing:
        raise PerturbFlowError(f"metrics not in the table: {', '.join(missing)}")
    means = table.groupby("model", sort=False)[list(metrics)].mean()
    if ax is None:
        _, ax = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
        ax = ax[0]
    for a, m in zip(ax, metrics):
        values = means[m].to_numpy()
        colors = ["tab:red" if str(name).startswith(MODEL_PREFIX) else "tab:gray" for name in means.index]
        a.barh(np.arange(len(values)), values, color=colors)
        a.set_yticks(np.arange(len(values)), means.index)
        a.invert_yaxis()
        a.set_title(m + (" (lower is better)" if m in LOWER_IS_BETTER else ""), fontsize=9)
    return finish(ax, show, save)
