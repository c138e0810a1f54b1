"""``pf.tl.evaluate``: score a prediction beside baselines fitted on the same real data."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from perturbflow._errors import PerturbFlowError
from perturbflow._threads import preserve_torch_threads
from perturbflow.data import check_counts
from perturbflow.metrics import evaluate_predictions, get_baseline, noise_ceiling_split
from perturbflow.metrics._groups import as_key_list, canonical_labels, cell_contexts

logger = logging.getLogger(__name__)

DEFAULT_BASELINES = ("control", "train_mean", "additive")
MODEL_NAME = "perturbflow"


def _counts_layer(adata: AnnData, layer: str | None) -> str | None:
    """``layer`` if given; else ``X`` when it holds counts, else the ``counts`` layer."""
    if layer is not None:
        return layer
    try:
        check_counts(adata, None)
        return None
    except PerturbFlowError:
        if "counts" in adata.layers:
            return "counts"
        raise PerturbFlowError(
            "the real data's X does not hold counts and it has no 'counts' layer; pass the layer"
        ) from None


@preserve_torch_threads()
def evaluate(
    adata_pred: AnnData,
    adata_real: AnnData,
    perturbation_key: str | None = None,
    *,
    control_value: str | None = None,
    context_keys: str | Sequence[str] | None = None,
    real_layer: str | None = None,
    pred_layer: str | None = "expected",
    baselines: Sequence[str] | None = None,
    noise_ceiling: bool = True,
    n_de_genes: int = 20,
    seed: int = 0,
    key_added: str = "perturbflow_evaluation",
    copy: bool = False,
) -> pd.DataFrame:
    """Score predicted cells against held-out real cells, beside baselines and a noise ceiling.

    The groups scored are the (perturbation, context) pairs of ``adata_pred``. Baselines are
    fitted on the real cells **outside** those groups and predict from the real control cells
    of the same contexts, so every row of the table is scored by the same code on the same
    held-out cells. The noise ceiling scores one half of the real cells of each group
    against the other half.

    Parameters
    ----------
    adata_pred
        Predicted cells (counts in ``X``), e.g. from :meth:`PerturbFlow.predict`.
    adata_real
        Real cells: the control cells and the held-out perturbed cells, and optionally the
        training cells (needed by the baselines other than ``control``).
    perturbation_key
        ``obs`` column of perturbation labels (default: the one the prediction records).
    control_value
        Label of control cells (default: the one the prediction records).
    context_keys
        ``obs`` columns defining a context (default: those of the prediction found in both).
    real_layer
        Layer of ``adata_real`` holding counts (default: ``X`` if it holds counts, else
        ``counts``).
    pred_layer
        Layer of ``adata_pred`` scored. The default ``"expected"`` scores perturbflow's
        expected counts (each source cell moved by the predicted change), the same kind of
        prediction the baselines make, so the comparison is like for like; ``X`` is scored
        when the prediction has no such layer. ``None`` scores ``X`` (perturbflow's sampled
        integer counts, which add rounding noise to every cell).
    baselines
        Names of baselines to score beside the prediction (see
        :func:`perturbflow.metrics.list_baselines`); ``None`` gives control, train_mean and
        additive, ``[]`` none.
    noise_ceiling
        Also score the real-versus-real split-half ceiling.
    n_de_genes
        Top DE genes of the ``top`` metrics.
    seed
        Seed for cell subsampling and the split halves.
    key_added
        Key in ``adata_pred.uns`` for the table and the parameters.
    copy
        Leave ``adata_pred`` untouched (the table is returned either way).

    Returns
    -------
    The per-(perturbation, context) table with a ``model`` column (``perturbflow``, the
    baselines, ``noise_ceiling``). Unless ``copy``, also writes
    ``adata_pred.uns[key_added] = {'table': ..., 'params': ...}``.
    """
    info = dict(adata_pred.uns.get("perturbflow_prediction", {}))
    perturbation_key = perturbation_key or info.get("perturbation_key")
    control_value = control_value or info.get("control_value")
    if perturbation_key is None or control_value is None:
        raise PerturbFlowError("pass perturbation_key and control_value")
    if context_keys is None:
        context_keys = [k for k in info.get("context_keys", []) if k in adata_real.obs.columns]
    context_keys = as_key_list(context_keys)
    real_layer = _counts_layer(adata_real, real_layer)
    if pred_layer is not None and pred_layer not in adata_pred.layers:
        if pred_layer != "expected":
            raise PerturbFlowError(f"layer {pred_layer!r} not found in the predicted AnnData")
        pred_layer = None
    baselines = DEFAULT_BASELINES if baselines is None else baselines
    for key in [perturbation_key, *context_keys]:
        for which, a in (("predicted", adata_pred), ("real", adata_real)):
            if key not in a.obs.columns:
                raise PerturbFlowError(f"key {key!r} not found in the {which} AnnData's obs")

    pred_groups = set(
        zip(
            canonical_labels(adata_pred.obs[perturbation_key], control_value),
            cell_contexts(adata_pred, context_keys),
        )
    )
    real_labels = canonical_labels(adata_real.obs[perturbation_key], control_value)
    real_ctx = cell_contexts(adata_real, context_keys)
    held_out = np.array([(p, c) in pred_groups for p, c in zip(real_labels, real_ctx)])
    is_control = real_labels == control_value
    eval_contexts = {c for _, c in pred_groups}
    if not (held_out.any()):
        raise PerturbFlowError("none of the predicted perturbations is present in the real data")
    scored = adata_real[held_out | (is_control & np.isin(real_ctx, list(eval_contexts)))]

    kwargs = {
        "perturbation_key": perturbation_key,
        "control_value": control_value,
        "context_keys": context_keys,
        "real_layer": real_layer,
        "n_de_genes": n_de_genes,
        "seed": seed,
    }
    tables = [evaluate_predictions(adata_pred, scored, pred_layer=pred_layer, **kwargs).assign(model=MODEL_NAME)]

    train = adata_real[~held_out]
    controls = scored[scored.obs_names.isin(adata_real.obs_names[is_control])]
    labels = sorted({p for p, _ in pred_groups})
    for name in baselines:
        baseline = get_baseline(name)()
        try:
            baseline.fit(train, perturbation_key, control_value, context_keys=context_keys, layer=real_layer)
            pred = baseline.predict(controls, labels, layer=real_layer)
        except PerturbFlowError as exc:
            logger.warning("baseline %s skipped: %s", name, exc)
            continue
        keep = [
            (p, c) in pred_groups
            for p, c in zip(canonical_labels(pred.obs[perturbation_key], control_value), cell_contexts(pred, context_keys))
        ]
        tables.append(evaluate_predictions(pred[np.array(keep)], scored, **kwargs).assign(model=name))
    if noise_ceiling:
        half_pred, half_real = noise_ceiling_split(
            scored, perturbation_key, control_value, seed=seed, context_keys=context_keys
        )
        layer_kwargs = dict(kwargs, pred_layer=real_layer)
        tables.append(evaluate_predictions(half_pred, half_real, **layer_kwargs).assign(model="noise_ceiling"))

    table = pd.concat(tables, ignore_index=True)
    table = table[["model", *[c for c in table.columns if c != "model"]]]
    if not copy:
        adata_pred.uns[key_added] = {
            "table": table,
            "params": {
                "perturbation_key": perturbation_key,
                "control_value": control_value,
                "context_keys": list(context_keys),
                "baselines": list(baselines),
                "n_de_genes": n_de_genes,
                "pred_layer": pred_layer or "X",
                "seed": seed,
            },
        }
    return table
