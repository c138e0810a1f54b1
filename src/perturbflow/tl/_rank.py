"""``pf.tl.rank_perturbations``: which untested perturbation would move the cells most."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from perturbflow._errors import PerturbFlowError
from perturbflow.data import parse_perturbation
from perturbflow.metrics import log_normalize
from perturbflow.models import PerturbFlow

logger = logging.getLogger(__name__)

N_TOP_GENES = 5


def _control_counts_layer(model: PerturbFlow, adata: AnnData) -> str | None:
    layer = model.registry.layer
    return layer if layer is not None and layer in adata.layers else None


def rank_perturbations(
    model: PerturbFlow,
    control_adata: AnnData,
    candidates: Sequence[str],
    *,
    n_cells: int = 200,
    seed: int = 0,
    n_steps: int | None = None,
    lfc_threshold: float = 0.5,
    key_added: str = "perturbflow_ranking",
    copy: bool = False,
) -> pd.DataFrame:
    """Rank candidate perturbations by the size of their predicted effect.

    Each candidate is predicted from the control cells; its effect is the change of the
    predicted mean expression (log1p of counts normalised to 10,000 per cell) from the mean
    of the control cells it was predicted from. Candidates with the largest predicted
    effects are the most informative next experiments when looking for strong responses;
    a predicted effect is only as good as the model's accuracy on held-out perturbations
    (check it with :func:`perturbflow.tl.evaluate` first).

    Parameters
    ----------
    model
        A trained :class:`~perturbflow.PerturbFlow`.
    control_adata
        Control cells (counts over the model's genes); only its control cells are used.
    candidates
        Perturbation labels to rank, e.g. untested combinations of seen atoms.
    n_cells
        Predicted cells per candidate.
    seed
        Seed of the predictions.
    n_steps
        ODE steps (default: the model's).
    lfc_threshold
        A gene counts as changed when its absolute mean change (natural-log fold change of
        normalised expression) exceeds this.
    key_added
        Key of ``control_adata.uns`` written.
    copy
        Leave ``control_adata`` untouched (the table is returned either way).

    Returns
    -------
    The table, one row per candidate sorted by effect: ``perturbation``, ``n_atoms``,
    ``effect_size`` (L2 norm of the mean change over all genes), ``n_de_genes`` (genes
    above ``lfc_threshold``), ``top_genes`` (the most changed genes, comma-separated) and
    ``rank`` (1 = largest effect). Unless ``copy``, also writes
    ``control_adata.uns[key_added] = {'table': ..., 'params': {...}}``.
    """
    if isinstance(candidates, str):
        candidates = [candidates]
    candidates = list(dict.fromkeys(map(str, candidates)))
    if not candidates:
        raise PerturbFlowError("no candidate perturbations given")
    if n_cells < 1:
        raise PerturbFlowError("n_cells must be at least 1")
    reg = model.registry
    controls = control_adata
    if reg.perturbation_key in control_adata.obs.columns:
        labels = control_adata.obs[reg.perturbation_key].astype(str)
        is_control = np.array([not parse_perturbation(x, reg.control_value, reg.separator) for x in labels])
        controls = control_adata[is_control]
    if controls.n_obs == 0:
        raise PerturbFlowError("no control cells in control_adata")

    pred = model.predict(controls, perturbations=candidates, n_steps=n_steps, seed=seed, n_cells=n_cells)
    if list(controls.var_names.astype(str)) != model.genes:  # predict checked that all genes are there
        controls = controls[:, model.genes]
    pred_expr = log_normalize(pred)  # (n_pred, G)
    ctrl_expr = log_normalize(controls, layer=_control_counts_layer(model, controls))  # (n_ctrl, G)
    row_of = pd.Series(np.arange(controls.n_obs), index=controls.obs_names.astype(str))
    genes = np.asarray(model.genes)
    rows = []
    for label in candidates:
        mask = (pred.obs[reg.perturbation_key].astype(str) == label).to_numpy()
        source = row_of.loc[pred.obs["source_cell"].astype(str).to_numpy()[mask]].to_numpy()
        delta = pred_expr[mask].mean(0) - ctrl_expr[source].mean(0)  # (G,)
        top = np.argsort(-np.abs(delta))[:N_TOP_GENES]
        rows.append(
            {
                "perturbation": label,
                "n_atoms": len(parse_perturbation(label, reg.control_value, reg.separator)),
                "effect_size": float(np.linalg.norm(delta)),
                "n_de_genes": int((np.abs(delta) > lfc_threshold).sum()),
                "top_genes": ",".join(genes[top]),
            }
        )
    table = pd.DataFrame(rows).sort_values("effect_size", ascending=False, ignore_index=True)
    table["rank"] = np.arange(1, len(table) + 1)
    logger.info("ranked %d candidates; largest effect: %s", len(table), table["perturbation"].iloc[0])
    if not copy:
        control_adata.uns[key_added] = {
            "table": table,
            "params": {"n_cells": n_cells, "seed": seed, "n_steps": n_steps, "lfc_threshold": lfc_threshold},
        }
    return table
