"""Ways to apply the additive model to cells, scored on Norman's held-out combinations.

The additive baseline moves each real control cell by the sum of the single genes' mean
changes of log-normalised expression and clips at zero. This script scores three other ways
of making cells with the same mean change, to show what the clipping and the number of
predicted cells do to the headline metrics (no training; a minute on 2 cores):

- ``mean_exact``: per gene, the shift that makes the clipped cells' mean equal the target
  mean (found by bisection), so clipping no longer biases the mean;
- ``mean_zeroed`` / ``mean_thinned``: the clipped cells of a gene whose mean clipping
  lifted are set to 0, the lowest first (``zeroed``) or at random (``thinned``, as thinning
  of counts makes zeros), until the mean is the target (the last cell only lowered), so the
  mean is exact while the other cells keep the additive change;
- ``single_cells``: the measured cells of each single gene moved by the other single's mean
  change (both halves, twice as many cells as the controls);
- ``single_cells_subsampled``: the same with as many cells as the controls (half from each).

Usage (from the repository root)::

    python benchmarks/additive_variants.py    # writes benchmarks/results/additive_variants.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts
from tasks import RESULTS_DIR, TASKS, save_results

import perturbflow as pf
from perturbflow.data import mean_exact_shift
from perturbflow.data._expression import TARGET_SUM, dense_rows, log_normalize_rows
from perturbflow.metrics import summarize

VARIANTS = ["additive", "mean_exact", "mean_zeroed", "mean_thinned", "single_cells", "single_cells_subsampled"]


def zero_to_mean(cells: np.ndarray, target: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``cells`` (n, G) with, per gene whose mean exceeds ``target``, the cells set to 0 in
    the order of ``order`` (n, G: ranks, lowest first) until the mean is ``target``."""
    out = cells.copy()
    n = len(cells)
    for g in np.flatnonzero(cells.mean(0) > target + 1e-9):
        excess = (cells[:, g].mean() - max(target[g], 0.0)) * n  # what the zeroed cells must remove
        for i in np.argsort(order[:, g]):
            if excess <= 0:
                break
            cut = min(out[i, g], excess)
            out[i, g] -= cut
            excess -= cut
    return out


def predict(variant: str, logx, lib, labels, combo: str, rng) -> tuple[np.ndarray, np.ndarray]:
    """Log-normalised predicted cells of ``combo`` and their library sizes."""
    a, b = combo.split("+")
    rows = {p: np.flatnonzero(labels == p) for p in ("control", a, b)}
    mean = {p: logx[r].mean(0) for p, r in rows.items()}
    shift_a, shift_b = mean[a] - mean["control"], mean[b] - mean["control"]
    ctrl = rows["control"]
    if variant == "additive":
        return np.maximum(logx[ctrl] + shift_a + shift_b, 0), lib[ctrl]
    if variant in ("mean_zeroed", "mean_thinned"):
        moved = logx[ctrl] + shift_a + shift_b
        clipped = np.maximum(moved, 0)
        order = clipped if variant == "mean_zeroed" else rng.random(clipped.shape)
        return zero_to_mean(clipped, moved.mean(0), order), lib[ctrl]
    if variant == "mean_exact":
        return np.maximum(logx[ctrl] + mean_exact_shift(logx[ctrl], shift_a + shift_b), 0), lib[ctrl]
    ra, rb = rows[a], rows[b]
    if variant == "single_cells_subsampled":
        half = len(ctrl) // 2
        ra, rb = rng.choice(ra, half, replace=False), rng.choice(rb, len(ctrl) - half, replace=False)
    cells = np.concatenate([logx[ra] + shift_b, logx[rb] + shift_a])
    return np.maximum(cells, 0), np.concatenate([lib[ra], lib[rb]])


def main() -> None:
    task = TASKS["norman"]()
    real = task.adata
    counts = real.layers["counts"]
    logx = dense_rows(log_normalize_rows(counts), np.arange(real.n_obs))
    lib = np.asarray(counts.sum(1)).ravel()
    labels = real.obs["perturbation"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    rows = []
    for variant in VARIANTS:
        cells, names = [], []
        for combo in task.perturbations:
            moved, lib_c = predict(variant, logx, lib, labels, combo, rng)
            cells.append(np.expm1(moved) * (lib_c / TARGET_SUM)[:, None])  # expected counts at the cells' libraries
            names += [combo] * len(moved)
        obs = pd.DataFrame({"perturbation": pd.Categorical(names)}, index=[f"cell{i}" for i in range(len(names))])
        pred = ad.AnnData(np.concatenate(cells).astype(np.float32), obs=obs, var=pd.DataFrame(index=real.var_names))
        table = pf.tl.evaluate(pred, real, perturbation_key="perturbation", control_value="control",
                               real_layer="counts", pred_layer=None, baselines=[], noise_ceiling=False, seed=0,
                               copy=True)
        summary = summarize(table).reset_index()
        summary["model"] = variant
        summary["n_pred_mean"] = table["n_pred"].mean()
        rows.append(summary)
    out = pd.concat(rows, ignore_index=True)
    print(out[["model", "n_pred_mean", "pearson_delta_top20", "mse_top20", "energy_distance", "energy_floor"]]
          .to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    save_results(out, RESULTS_DIR / "additive_variants.csv")


if __name__ == "__main__":
    main()
