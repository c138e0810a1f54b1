"""Where the context transfer's mean goes wrong in a new context: gene MSE against the energy's PCs.

For every Kang fold (one cell type's stimulated cells held out), the gene-space effect of
IFN-beta is transferred to the held-out cell type from the other six, as the model's prior
does (:class:`~perturbflow.models._transfer.ContextTransfer`, bandwidth chosen by
leave-one-context-out), and compared with the real held-out effect:

- ``mse``: mean squared error over all genes of the mean change (what the transfer's
  cross-validation minimises);
- ``norm_ratio``: length of the predicted change over the real one's;
- ``pc_error``: squared error of the mean change in the 30-PC space of the real held-out
  cells (control and stimulated), the space the energy distance is computed in;
- ``scale_own_pcs`` / ``scale_training_pcs`` / ``scale_genes``: the factor that would best
  fit the predicted change to the real one (least squares) in the held-out cells' 30 PCs,
  in the 30 PCs of the training cell types' cells, and over all genes. Above 1 in the first
  and near 1 in the others: the held-out cells' own axes carry a part of their response
  that the other cell types do not show, rather than the transfer being short overall.

Rows: the chosen transfer (``local``: the model's default since session 10, each context's
bandwidth chosen near it from the training contexts' errors in their cells' principal axes;
``chosen``: one bandwidth for all, by the squared error over all genes), every bandwidth
of its grid, and the mean shift (equal weights, no shrinkage). No training: seconds per fold.

Usage (from the repository root)::

    python benchmarks/transfer_diagnosis.py    # writes results/transfer_diagnosis.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts
from tasks import FOLDS, RESULTS_DIR, fold_task, save_results

from perturbflow.data._expression import dense_rows, log_normalize_rows
from perturbflow.models._transfer import BANDWIDTHS, ContextTransfer
from perturbflow.train import context_axes


def fold_rows(held: str) -> list[dict]:
    task = fold_task("kang", held)
    adata = task.adata
    logx = dense_rows(log_normalize_rows(adata.layers["counts"]), np.arange(adata.n_obs))
    ctx = adata.obs["cell_type"].astype(str).to_numpy()
    stim = adata.obs["condition"].astype(str).to_numpy() != task.control_value
    atoms = frozenset(["stimulated"])
    shifts, sizes, noise, control_means = {}, {}, {}, {}
    for c in np.unique(ctx):
        ctrl, pert = logx[(ctx == c) & ~stim], logx[(ctx == c) & stim]
        control_means[c] = ctrl.mean(0)
        if c == held:
            true = pert.mean(0) - ctrl.mean(0)
            pca = PCA(30, random_state=0).fit(np.vstack([ctrl, pert]))
            continue
        shifts[(atoms, c)] = pert.mean(0) - ctrl.mean(0)
        sizes[(atoms, c)] = len(pert)
        noise[(atoms, c)] = float(np.mean(pert.var(0) / len(pert) + ctrl.var(0) / len(ctrl)))
    training_pca = PCA(30, random_state=0).fit(logx[ctx != held])
    chosen, scores = ContextTransfer.select(shifts, sizes, control_means, noise)
    axes = context_axes(adata.layers["counts"], {c: np.flatnonzero(ctx == c) for c in np.unique(ctx) if c != held}, 0)
    local, _ = ContextTransfer.select(shifts, sizes, control_means, noise, axes)
    pooled = {c: v for (_, c), v in shifts.items()}  # one perturbation: the pooled effect is its own

    def fitted_scale(axes: np.ndarray | None, pred: np.ndarray) -> float:
        p, t = (pred, true) if axes is None else (axes @ pred, axes @ true)  # None: every gene
        return float(p @ t / (p @ p))

    def row(name: str, pred: np.ndarray, loco: float = np.nan) -> dict:
        err = pca.components_ @ (pred - true)  # (30,) the mean's error along the energy's axes
        return {"fold": held, "transfer": name, "mse": float(np.mean((pred - true) ** 2)),
                "norm_ratio": float(np.linalg.norm(pred) / np.linalg.norm(true)),
                "pc_error": float(err @ err), "pc1_error": float(err[0]), "loco_mse": loco,
                "scale_own_pcs": fitted_scale(pca.components_, pred),
                "scale_training_pcs": fitted_scale(training_pca.components_, pred),
                "scale_genes": fitted_scale(None, pred)}

    rows = [row(f"chosen (h={chosen.bandwidth})", chosen.transfer(atoms, held, shifts, pooled, control_means[held])),
            row(f"local (h={local.bandwidth_in(held, control_means[held])})",
                local.transfer(atoms, held, shifts, pooled, control_means[held]))]
    for h in BANDWIDTHS:
        t = ContextTransfer(control_means, h, chosen.specificity, shifts, noise)
        rows.append(row(f"h={h}", t.transfer(atoms, held, shifts, pooled, control_means[held]), scores.get(h, np.nan)))
    rows.append(row("mean_shift", np.mean(list(shifts.values()), axis=0)))
    # the chosen transfer's direction at the kernel-weighted length of the contexts' effects
    # (sampling noise taken out of each squared length)
    others = sorted(c for _, c in shifts)
    w = chosen.weights(held, others, control_means[held])
    G = len(true)
    length2 = np.array([shifts[(atoms, c)] @ shifts[(atoms, c)] - G * noise[(atoms, c)] for c in others])
    pred = chosen.transfer(atoms, held, shifts, pooled, control_means[held])
    rows.append(row("chosen, kept length", pred * np.sqrt(max(w @ length2, 0)) / np.linalg.norm(pred)))
    return rows


def main() -> None:
    table = pd.DataFrame([r for held in FOLDS["kang"] for r in fold_rows(held)])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    save_results(table, RESULTS_DIR / "transfer_diagnosis.csv")


if __name__ == "__main__":
    main()
