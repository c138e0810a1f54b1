"""Quality of the flow's transport against the number of ODE steps, and its straightness.

Usage (from the repository root, with ../shared/data beside it for the real tasks)::

    python benchmarks/steps.py                                  # synthetic data, default model
    python benchmarks/steps.py --task norman --reflow 500       # one real fold, with and without reflow

The model is trained with default settings (``--reflow N`` adds one reflow of N fine-tuning
steps; the flow before the reflow is kept and measured too). The flow's correction is forced
on in every context (``correction_scale_in`` returns 1, as ``quality.py``'s ``flow_full``)
so that every predicted cell is moved by the ODE. Each setting predicts the task's held-out
perturbations from its control cells and is compared with 20 midpoint steps (the reference):

- ``latent_msd``: mean squared distance of the latent end points to the reference's;
  ``latent_rel``: the same over the mean squared length of the reference's move
  (end point minus the source cell's latent);
- ``expr_mse``: mean squared difference of ``log1p`` expected counts to the reference's;
  ``expr_rel``: the same over that of the prior alone (the flow switched off), i.e. the
  step error as a share of the flow's own correction in gene space;
- ``pearson_delta_top20`` and ``energy_excess`` (energy distance minus its floor) against the
  real held-out cells, from ``pf.tl.evaluate`` (averaged over perturbations);
- ``straightness`` / ``straightness_rel`` of the flow (``perturbflow.flow.path_straightness``
  on 64-step Euler paths of the same cells), once per flow.

Writes ``benchmarks/results/steps.csv`` (each row carries its command).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tasks import DEFAULT_DATA_DIR, RESULTS_DIR, TASKS, Task, fold_task, save_results

import perturbflow as pf
from perturbflow.flow import path_straightness

SETTINGS = [("euler", 1), ("euler", 2), ("euler", 4), ("euler", 8), ("euler", 20),
            ("midpoint", 1), ("midpoint", 2), ("midpoint", 4), ("midpoint", 8), ("midpoint", 20)]


def synthetic_task(seed: int = 0) -> Task:
    adata = pf.datasets.synthetic(n_genes=500, seed=seed)
    adata.layers["counts"] = adata.X.copy()
    held = sorted(adata.obs.loc[adata.obs["split"] == "test", "perturbation"].astype(str).unique())
    contexts = sorted(adata.obs["cell_type"].astype(str).unique())
    return Task("synthetic", "pf.datasets.synthetic(n_genes=500): 3 combinations held out", adata,
                "perturbation", "control", ["cell_type"], held, contexts, "additive")


@contextmanager
def flow_on(model, scale: float = 1.0):
    """The model with ``scale`` of the flow's correction applied in every context."""
    model.correction_scale_in = lambda context, mean=None: scale  # an instance attribute hides the method
    try:
        yield model
    finally:
        del model.correction_scale_in


def evaluate(pred, task, seed) -> dict:
    table = pf.tl.evaluate(pred, task.adata, real_layer="counts", pred_layer="expected", baselines=[],
                           noise_ceiling=False, seed=seed, copy=True)
    table = table[table["model"] == table["model"].iloc[0]] if "model" in table else table
    return {"pearson_delta_top20": float(table["pearson_delta_top20"].mean()),
            "energy_excess": float((table["energy_distance"] - table["energy_floor"]).mean())}


def curve(model, task, name: str, seed: int, score: bool) -> list[dict]:
    controls = task.controls()
    z_src = pd.DataFrame(model.get_latent_representation(controls), index=controls.obs_names)
    with flow_on(model, 0.0):
        prior = model.predict(controls, task.perturbations, seed=seed)  # the flow switched off
    with flow_on(model):
        ref = model.predict(controls, task.perturbations, seed=seed, n_steps=20, solver="midpoint")
        path = model.predict(controls, task.perturbations, seed=seed, n_steps=64, solver="euler",
                             return_path=True).uns["perturbflow_paths"]
        s = path_straightness(path)
        z_ref = ref.obsm["X_perturbflow"]
        move = ((z_ref - z_src.loc[ref.obs["source_cell"]].to_numpy()) ** 2).sum(-1).mean()
        log_ref = np.log1p(ref.layers["expected"])
        prior_mse = float(((np.log1p(prior.layers["expected"]) - log_ref) ** 2).mean())
        rows = []
        for solver, n_steps in SETTINGS:
            start = time.perf_counter()
            pred = model.predict(controls, task.perturbations, seed=seed, n_steps=n_steps, solver=solver)
            elapsed = time.perf_counter() - start
            msd = float(((pred.obsm["X_perturbflow"] - z_ref) ** 2).sum(-1).mean())
            mse = float(((np.log1p(pred.layers["expected"]) - log_ref) ** 2).mean())
            row = {"task": task.name, "flow": name, "solver": solver, "n_steps": n_steps,
                   "network_calls": n_steps * (2 if solver == "midpoint" else 1), "cells": pred.n_obs,
                   "latent_msd": msd, "latent_rel": msd / move, "expr_mse": mse,
                   "expr_rel": mse / prior_mse if prior_mse > 0 else np.nan, "predict_s": elapsed,
                   "straightness": s.straightness, "straightness_rel": s.normalized}
            if score:
                row.update(evaluate(pred, task, seed))
            rows.append(row)
            print({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    if score:
        rows.append({"task": task.name, "flow": "prior_only", "cells": prior.n_obs, **evaluate(prior, task, seed)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="synthetic", choices=["synthetic", *TASKS])
    parser.add_argument("--fold", default=None, help="held-out context of mcfaline/kang (default: the first)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--backbone", default="mlp")
    parser.add_argument("--reflow", type=int, default=0, help="fine-tuning steps of one reflow (0: none)")
    parser.add_argument("--max-epochs", type=int, default=None, help="epochs of both stages (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-score", action="store_true", help="skip pf.tl.evaluate against the real cells")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "steps.csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = synthetic_task(args.seed) if args.task == "synthetic" else fold_task(args.task, args.fold, args.data_dir)
    task.setup_model()

    import perturbflow.models._perturbflow as model_module

    before = {}
    fitted_reflow = model_module.reflow

    def keep_first_flow(flow, *a, **kw):  # the flow before its reflow, to measure both
        before["flow"] = copy.deepcopy(flow)
        start = time.perf_counter()
        out = fitted_reflow(flow, *a, **kw)
        before["reflow_s"] = time.perf_counter() - start
        return out

    model_module.reflow = keep_first_flow
    start = time.perf_counter()
    model = pf.PerturbFlow(task.adata, backbone=args.backbone, reflow_steps=args.reflow)
    model.train(max_epochs=args.max_epochs, seed=args.seed, progress_bar=False)
    train_s = time.perf_counter() - start
    torch.set_num_threads(args.threads)
    rows = []
    if "flow" in before:
        reflowed = model.flow
        model.flow = before["flow"]
        rows += curve(model, task, "rectified", args.seed, not args.no_score)
        model.flow = reflowed
        rows += curve(model, task, f"reflow_{args.reflow}", args.seed, not args.no_score)
    else:
        rows += curve(model, task, "rectified", args.seed, not args.no_score)
    table = pd.DataFrame(rows).assign(train_s=train_s, reflow_s=before.get("reflow_s", 0.0),
                                      correction_scale=model.correction_scale)
    print(table.to_string(index=False))
    save_results(table, args.out)


if __name__ == "__main__":
    main()
