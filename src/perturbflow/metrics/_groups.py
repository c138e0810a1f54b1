"""Grouping of cells by (perturbation, context), shared by evaluation and baselines."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from perturbflow.data import canonical_label, context_labels, parse_perturbation
from perturbflow.data._setup import check_obs_key  # noqa: F401  (re-used by metrics)


def as_key_list(keys: str | Sequence[str] | None) -> list[str]:
    """``None`` → ``[]``, a string → ``[string]``, a sequence → a list."""
    if keys is None:
        return []
    if isinstance(keys, str):
        return [keys]
    return list(keys)


def canonical_labels(labels: Sequence[str] | pd.Series, control_value: str) -> np.ndarray:
    """Canonical label of each cell: sorted atoms joined by ``+``, ``control_value`` for controls.

    ``B+A``, ``A+B`` and GEARS ``A+ctrl`` map to one label, so predictions and real data with
    different spellings of the same perturbation are matched.
    """
    labels = pd.Series(np.asarray(labels, dtype=object)).astype(str)
    uniq = pd.unique(labels)
    mapping = {
        lab: canonical_label(parse_perturbation(lab, control_value), control_value)
        for lab in uniq
    }
    return labels.map(mapping).to_numpy(dtype=object)


def cell_contexts(adata: AnnData, context_keys: list[str]) -> np.ndarray:
    """Context string of each cell (joined context values; ``"all"`` without keys)."""
    return np.asarray(context_labels(adata, context_keys), dtype=object)


def group_codes(
    perts: np.ndarray, contexts: np.ndarray
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Integer code of each cell's (perturbation, context) group, and the list of groups."""
    frame = pd.DataFrame({"p": perts, "c": contexts})
    codes, uniq = pd.MultiIndex.from_frame(frame).factorize()
    return np.asarray(codes, dtype=np.int64), [(str(p), str(c)) for p, c in uniq]
