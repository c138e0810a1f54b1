"""Real data: Norman 2019 (K562 CRISPRa), its 10x lanes grouped into three replicates, each
held out in turn. The same screen in a new replicate has the effects of the others, so the
per-perturbation shrinkage must not pull the knock-outs to the pooled effect there: the
transferred effects are closer to the held-out replicate's than the plain mean shift's."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from perturbflow.data import log_normalize_rows
from perturbflow.models._transfer import ContextTransfer, pooled_effects
from perturbflow.train import context_axes, gene_space_shifts
from tests.conftest import NORMAN_FILE, require

REPLICATES = {"1": "r1", "2": "r1", "3": "r1", "4": "r2", "5": "r2", "6": "r2", "7": "r3", "8": "r3"}


@pytest.fixture(scope="module")
def replicates():
    adata = ad.read_h5ad(require(NORMAN_FILE))
    keep = (adata.obs["dataset"] == "norman19").to_numpy() & adata.obs["counts_recovered_exact"].to_numpy()
    adata = adata[keep].copy()
    replicate = np.array([REPLICATES[name.rsplit("-", 1)[-1]] for name in adata.obs_names])
    label = adata.obs["perturbation"].astype(str).to_numpy()
    control = label == "control"
    cells = {(frozenset(p.split("+")), r): np.flatnonzero((label == p) & (replicate == r))
             for p in np.unique(label[~control]) for r in np.unique(replicate)}
    counts = adata.layers["counts"]
    shifts, control_means, noise = gene_space_shifts(log_normalize_rows(counts), cells, control, replicate)
    axes = context_axes(counts, {r: np.flatnonzero(replicate == r) for r in np.unique(replicate)}, seed=0)
    return shifts, control_means, noise, {k: len(v) for k, v in cells.items()}, axes


def _errors(replicates, held: str) -> tuple[float, float]:
    """Squared error of every perturbation's transferred effect in the held replicate, in its
    cells' 30 principal axes, summed: the transfer chosen on the others, the plain mean shift."""
    shifts, control_means, noise, sizes, axes = replicates
    rest = {k: v for k, v in shifts.items() if k[1] != held}
    pooled = pooled_effects(rest, sizes)
    chosen = ContextTransfer.select(rest, sizes, control_means, noise)[0]
    plain = ContextTransfer(control_means, specificity=1.0)
    totals = []
    for transfer in (chosen, plain):
        total = 0.0
        for (atoms, c), true in shifts.items():
            if c == held:
                along = axes[held] @ (transfer.transfer(atoms, held, rest, pooled, control_means[held]) - true)
                total += float(along @ along)
        totals.append(total)
    return tuple(totals)


def test_a_new_replicate_keeps_the_knock_outs_near_their_measured_effects(replicates):
    errors = np.array([_errors(replicates, held) for held in ("r1", "r2", "r3")])
    shrunk, plain = errors.sum(0)
    # 5% below the mean shift's; counting the control mean's noise as the effect's (sessions
    # 5-17) shrank the weak knock-outs to the pooled effect and came 5% above it
    # (benchmarks/RESULTS.md, "Session 18"; "Session 19" for the 5%)
    assert shrunk < plain
