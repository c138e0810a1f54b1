"""``pf.pp``: checks and annotations of an AnnData before a model is set up."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from perturbflow._errors import PerturbFlowError
from perturbflow.data import canonical_label, parse_perturbation
from perturbflow.data import check_counts as _check_counts


def check_counts(adata: AnnData, layer: str | None = None) -> None:
    """Check that ``adata`` holds raw counts: non-negative, finite integers.

    The check runs over chunks of rows, so a sparse matrix is never densified whole.

    Parameters
    ----------
    adata
        AnnData to check.
    layer
        Layer holding the counts; ``None`` checks ``X``.

    Returns
    -------
    ``None``; nothing is written. Raises :class:`~perturbflow.PerturbFlowError` naming the
    problem (no cells, missing layer, non-integer, negative or non-finite values).
    """
    _check_counts(adata, layer)


def parse_perturbations(
    adata: AnnData,
    perturbation_key: str = "perturbation",
    control_value: str = "control",
    *,
    separator: str = "+",
    key_added: str = "perturbation_atoms",
    copy: bool = False,
) -> AnnData | None:
    """Parse each cell's perturbation label into its set of atoms.

    ``B+A``, ``A+B``, GEARS-style ``A+ctrl`` / ``ctrl+A`` and plain ``A`` all parse into
    sets, written back as one canonical label per cell (atoms sorted, joined by
    ``separator``; the control becomes ``control_value``).

    Parameters
    ----------
    adata
        AnnData with a column of perturbation labels in ``obs``.
    perturbation_key
        Column of ``obs`` holding the labels.
    control_value
        Label of the control cells (GEARS' ``ctrl`` is recognised as well).
    separator
        String between the atoms of a combination.
    key_added
        Name of the ``obs`` column and ``uns`` entry written.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``. Writes

    - ``obs[key_added]``: canonical label of each cell (categorical), e.g. ``"A+B"``;
    - ``obs['n_' + key_added]``: number of atoms of each cell (0 for controls);
    - ``uns[key_added]``: ``{'atoms': sorted list of all atoms, 'params': {...}}``.
    """
    if perturbation_key not in adata.obs.columns:
        known = ", ".join(map(str, adata.obs.columns[:20])) or "none"
        raise PerturbFlowError(
            f"perturbation key {perturbation_key!r} not found in adata.obs (columns: {known})"
        )
    adata = adata.copy() if copy else adata
    labels = adata.obs[perturbation_key].astype(str)
    parsed = {lab: parse_perturbation(lab, control_value, separator) for lab in pd.unique(labels)}
    canonical = {lab: canonical_label(atoms, control_value, separator) for lab, atoms in parsed.items()}
    adata.obs[key_added] = pd.Categorical(labels.map(canonical).to_numpy())
    n_atoms = {lab: len(atoms) for lab, atoms in parsed.items()}
    adata.obs[f"n_{key_added}"] = labels.map(n_atoms).to_numpy(dtype=np.int64)
    adata.uns[key_added] = {
        "atoms": sorted({a for atoms in parsed.values() for a in atoms}),
        "params": {
            "perturbation_key": perturbation_key,
            "control_value": control_value,
            "separator": separator,
        },
    }
    return adata if copy else None
