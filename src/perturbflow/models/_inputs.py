"""Checks of what a trained model is given: counts and genes, control cells, perturbation labels."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from perturbflow._errors import PerturbFlowError
from perturbflow.data import (
    DataRegistry,
    check_counts,
    get_counts,
    parse_perturbation,
    perturbation_atoms,
)

logger = logging.getLogger(__name__)


def aligned_counts(adata: AnnData, genes: list[str], layer: str | None):
    """The counts of ``adata`` with its genes in the model's order; errors name what is wrong.

    ``layer`` is the model's counts layer; ``X`` is used when ``adata`` lacks it.
    """
    if layer is not None and layer not in adata.layers:
        if adata.X is None:
            raise PerturbFlowError(f"layer {layer!r} (the model's counts) not found in AnnData")
        logger.info("layer %r not found; using X as counts", layer)
        layer = None
    names = adata.var_names.astype(str)
    if list(names) != genes:
        missing = pd.Index(genes).difference(names)
        if len(missing) or len(names) != len(genes):
            extra = names.difference(pd.Index(genes))
            raise PerturbFlowError(
                f"genes differ from the model's: {len(missing)} of the model's {len(genes)} genes "
                f"missing (e.g. {list(missing[:3])}), {len(extra)} extra; subset to the training genes"
            )
        adata = adata[:, genes]
    check_counts(adata, layer)
    return get_counts(adata, layer)


def requested_perturbations(
    perturbations: Sequence[str] | str, atoms: list[str], registry: DataRegistry
) -> list[tuple[str, frozenset, list[int]]]:
    """``(label, atom set, 1-based atom indices)`` of each requested label; every atom must be
    one of the model's ``atoms``."""
    if isinstance(perturbations, str):
        perturbations = [perturbations]
    if len(perturbations) == 0:
        raise PerturbFlowError("no perturbations given")
    index = {a: i + 1 for i, a in enumerate(atoms)}
    out = []
    for label in perturbations:
        parsed = parse_perturbation(label, registry.control_value, registry.separator)
        if not parsed:
            raise PerturbFlowError(f"{label!r} is the control label, not a perturbation")
        unknown = sorted(a for a in parsed if a not in index)
        if unknown:
            raise PerturbFlowError(f"unknown perturbation {label!r}: {', '.join(unknown)} never seen in training")
        out.append((str(label), parsed, [index[a] for a in sorted(parsed)]))
    return out


def control_cells(adata: AnnData, registry: DataRegistry) -> AnnData:
    """The control cells of ``adata`` (all of it when it has no perturbation column)."""
    key = registry.perturbation_key
    if key in adata.obs.columns:
        is_control = np.array([len(a) == 0 for a in perturbation_atoms(adata, registry)])
        if not is_control.any():
            raise PerturbFlowError(f"no control cells ({registry.control_value!r} in obs[{key!r}]) in the control AnnData")
        if not is_control.all():
            logger.info("using the %d control cells of %d given", int(is_control.sum()), adata.n_obs)
            adata = adata[is_control]
    if adata.n_obs == 0:
        raise PerturbFlowError("the control AnnData has no cells")
    return adata
