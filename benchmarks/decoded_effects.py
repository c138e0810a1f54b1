"""How much of a measured perturbation effect survives the trip through the VAE's latent space.

For every perturbed training group, the cells are split in two random halves A and B. The
top-20 genes are chosen by the absolute mean change of half A (log-normalised expression,
against the context's control cells). On those genes, three changes of half B are regressed
(through the origin) on half A's:

- ``measured``: half B's own mean change. Its slope is below 1 only through sampling noise
  (genes chosen on half A's noise regress to the mean): the most any estimate from half B
  can reach;
- ``decoded``: the change the decoder gives when every control cell's latent is moved by
  half B's mean latent shift (what a perfect latent mean shift predicts, decoded as
  ``predict`` does);
- ``reconstructed``: half B's cells encoded and decoded, against the decoded control cells.

``decoded / measured`` is the share of the effect the latent space carries, beyond noise.

Usage (from the repository root)::

    python benchmarks/decoded_effects.py      # Norman and McFaline; writes results/decoded_effects.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts
from tasks import DEFAULT_DATA_DIR, RESULTS_DIR, TASKS, parse_config, save_results

from perturbflow.data._expression import dense_rows, log_normalize_rows
from perturbflow.models import PerturbFlowConfig
from perturbflow.nn import CountVAE

TOP = 20


def slope(y: np.ndarray, x: np.ndarray) -> float:
    return float(x @ y / (x @ x))


def decoded_log(vae: CountVAE, z: np.ndarray, lib: np.ndarray) -> np.ndarray:
    """Mean over cells of ``log1p(1e4 mu(z) / l)``, the decoder's log-normalised expression."""
    lib_t = torch.as_tensor(lib, dtype=torch.float32)
    mu = vae.distribution(torch.as_tensor(z, dtype=torch.float32), lib_t).mean
    return torch.log1p(mu * (1e4 / lib_t).unsqueeze(-1)).mean(0).numpy()


def run_task(task, seed: int, config: PerturbFlowConfig) -> pd.DataFrame:
    adata = task.adata
    counts = adata.layers["counts"]
    is_train = adata.obs["split"].to_numpy() == "train"
    vae = CountVAE.fit(counts, np.flatnonzero(is_train), adata.var_names.astype(str).tolist(), config, progress_bar=False, seed=seed)
    z = vae.latent(counts, np.arange(adata.n_obs))
    logx = dense_rows(log_normalize_rows(counts), np.arange(adata.n_obs))
    lib = np.asarray(counts.sum(1)).ravel().astype(np.float32)
    pert = adata.obs[task.perturbation_key].astype(str).to_numpy()
    ctx = adata.obs[task.context_keys[0]].astype(str).to_numpy() if task.context_keys else np.full(len(pert), "all")
    rng = np.random.default_rng(seed)
    rows = []
    for c in np.unique(ctx):
        ctrl = np.flatnonzero((pert == task.control_value) & (ctx == c))
        ctrl_decoded = decoded_log(vae, z[ctrl], lib[ctrl])
        ctrl_mean = logx[ctrl].mean(0)
        for p in np.unique(pert[is_train & (ctx == c)]):
            cells = np.flatnonzero((pert == p) & (ctx == c) & is_train)
            if p == task.control_value or len(cells) < 20:
                continue
            cells = rng.permutation(cells)
            half_a, half_b = cells[: len(cells) // 2], cells[len(cells) // 2 :]
            change_a = logx[half_a].mean(0) - ctrl_mean
            change_b = logx[half_b].mean(0) - ctrl_mean
            top = np.argsort(-np.abs(change_a))[:TOP]
            shift = z[half_b].mean(0) - z[ctrl].mean(0)
            decoded = decoded_log(vae, z[ctrl] + shift, lib[ctrl]) - ctrl_decoded
            reconstructed = decoded_log(vae, z[half_b], lib[half_b]) - ctrl_decoded
            rows.append({
                "task": task.name, "context": c, "perturbation": p, "n_cells": len(cells),
                "measured": slope(change_b[top], change_a[top]),
                "decoded": slope(decoded[top], change_a[top]),
                "reconstructed": slope(reconstructed[top], change_a[top]),
            })
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["norman", "mcfaline"], choices=list(TASKS))
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", nargs="*", default=[], help="PerturbFlowConfig overrides, KEY=VALUE")
    parser.add_argument("--out", type=Path,
                        default=RESULTS_DIR / "decoded_effects.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = PerturbFlowConfig(**parse_config(args.config))
    table = pd.concat([run_task(TASKS[name](args.data_dir), args.seed, config) for name in args.tasks],
                      ignore_index=True)
    summary = table.groupby("task")[["measured", "decoded", "reconstructed"]].median()
    summary["decoded / measured"] = summary["decoded"] / summary["measured"]
    print("median slope on the top-20 genes of the other half, over perturbed training groups")
    print(summary.to_string(float_format=lambda v: f"{v:.2f}"))
    save_results(table, args.out)


if __name__ == "__main__":
    main()
