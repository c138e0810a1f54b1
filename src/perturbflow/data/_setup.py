"""Validate an AnnData for perturbflow and record the keys it uses (the data registry)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from anndata import AnnData

from perturbflow._errors import PerturbFlowError
from perturbflow.data._perturbations import parse_perturbation
from perturbflow.data._validate import check_counts

UNS_KEY = "perturbflow"
SPLIT_VALUES = ("train", "val", "test")
CONTEXT_SEPARATOR = " | "
DEFAULT_CONTEXT = "all"


@dataclass
class DataRegistry:
    """What :meth:`PerturbFlow.setup_anndata` recorded about an AnnData."""

    perturbation_key: str
    control_value: str
    layer: str | None = None
    context_keys: list[str] = field(default_factory=list)
    split_key: str | None = None
    separator: str = "+"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DataRegistry:
        d = dict(d)
        d["context_keys"] = list(d.get("context_keys") or [])
        d["layer"] = d.get("layer") or None
        d["split_key"] = d.get("split_key") or None
        return cls(**d)


def check_obs_key(adata: AnnData, key: str, what: str, which: str = "adata") -> None:
    """Raise :class:`PerturbFlowError` unless ``key`` is a column of ``adata.obs``."""
    if key not in adata.obs.columns:
        known = ", ".join(map(str, adata.obs.columns[:20])) or "none"
        raise PerturbFlowError(f"{what} {key!r} not found in {which}.obs (columns: {known})")


def context_labels(adata: AnnData, context_keys: list[str]) -> np.ndarray:
    """One string per cell naming its context (the joined values of the context keys)."""
    if not context_keys:
        return np.full(adata.n_obs, DEFAULT_CONTEXT, dtype=object)
    for key in context_keys:
        check_obs_key(adata, key, "context key")
    parts = [adata.obs[k].astype(str).to_numpy() for k in context_keys]
    out = parts[0].astype(object)
    for p in parts[1:]:
        out = out + CONTEXT_SEPARATOR + p
    return out


def perturbation_atoms(adata: AnnData, registry: DataRegistry) -> list[frozenset[str]]:
    """The parsed set of atoms of every cell (empty for controls)."""
    labels = adata.obs[registry.perturbation_key].astype(str)
    cache: dict[str, frozenset[str]] = {}
    for lab in pd.unique(labels):
        cache[lab] = parse_perturbation(lab, registry.control_value, registry.separator)
    return [cache[lab] for lab in labels]


def split_labels(adata: AnnData, registry: DataRegistry) -> np.ndarray:
    """The split of each cell (``train``/``val``/``test``); all ``train`` without a split key."""
    if registry.split_key is None:
        return np.full(adata.n_obs, "train", dtype=object)
    values = adata.obs[registry.split_key].astype(str).to_numpy()
    bad = sorted(set(values) - set(SPLIT_VALUES))
    if bad:
        raise PerturbFlowError(
            f"split key {registry.split_key!r} holds {bad[:5]}; allowed values are train, val, test"
        )
    return values


def setup_anndata(
    adata: AnnData,
    perturbation_key: str = "perturbation",
    control_value: str = "control",
    layer: str | None = None,
    context_keys: list[str] | str | None = None,
    split_key: str | None = None,
    separator: str = "+",
) -> DataRegistry:
    """Validate ``adata`` and record the registry in ``adata.uns['perturbflow']``."""
    if adata.n_obs == 0:
        raise PerturbFlowError("AnnData has no cells")
    if isinstance(context_keys, str):
        context_keys = [context_keys]
    registry = DataRegistry(
        perturbation_key=perturbation_key,
        control_value=str(control_value),
        layer=layer,
        context_keys=list(context_keys or []),
        split_key=split_key,
        separator=separator,
    )
    check_obs_key(adata, perturbation_key, "perturbation key")
    if split_key is not None:
        check_obs_key(adata, split_key, "split key")
    context_labels(adata, registry.context_keys)
    check_counts(adata, layer)

    atoms = perturbation_atoms(adata, registry)
    is_control = np.array([len(a) == 0 for a in atoms])
    if not is_control.any():
        labels = adata.obs[perturbation_key].astype(str).unique()[:5].tolist()
        raise PerturbFlowError(
            f"control label {control_value!r} not found in obs[{perturbation_key!r}] "
            f"(values include {labels})"
        )
    if is_control.all():
        raise PerturbFlowError(
            f"obs[{perturbation_key!r}] holds only control cells; at least one perturbed group is needed"
        )
    split_labels(adata, registry)
    adata.uns[UNS_KEY] = {k: v for k, v in registry.to_dict().items() if v is not None}
    return registry


def get_registry(adata: AnnData) -> DataRegistry:
    """Read the registry that :func:`setup_anndata` wrote."""
    if UNS_KEY not in adata.uns:
        raise PerturbFlowError(
            "AnnData is not set up; call PerturbFlow.setup_anndata(adata, perturbation_key=..., "
            "control_value=...) first"
        )
    return DataRegistry.from_dict(dict(adata.uns[UNS_KEY]))
