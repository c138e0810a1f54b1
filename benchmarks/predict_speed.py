"""Prediction throughput with the flow applied, split into encode / flow / decode / sample.

Usage (from the repository root)::

    python benchmarks/predict_speed.py                       # 20,000 cells x 2,000 genes
    python benchmarks/predict_speed.py --cells 5000 --genes 500 --settings euler:1 midpoint:20

A small model is trained on seeded synthetic data (a few hundred control cells per context
and the perturbed cells; the other control cells are held out of training with
``split='test'``); then every control cell (``--cells`` in all) is predicted under one
perturbation. The flow's correction is forced on in every context
(``model.correction_scale = 1`` and every context in ``model.flow_contexts``) so that the ODE
runs for every cell, whatever the calibration chose. Each setting is timed ``--repeats``
times and the best wall time is kept (the machine may be shared); the process's CPU time
(all threads) is recorded beside it, since on a loaded machine it varies less than the wall
time. The split of the time is measured by
wrapping the model's encode (``CountVAE.latent``), flow (``PerturbFlow._transport``) and
decode (``CountVAE.decode_delta``, which also rounds the counts) calls; scVI's own
``get_normalized_expression`` plus NB sampling of the same cells is the reference.

Writes ``benchmarks/results/predict_speed.csv`` (each row carries its command).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tasks import RESULTS_DIR, parse_config, save_results
from timers import Timers

import perturbflow as pf
from perturbflow.nn import CountVAE


def synthetic_model(n_cells: int, n_genes: int, backbone: str, seed: int = 0, model_dir: Path | None = None,
                    config: dict | None = None):
    """A model trained briefly on synthetic data, and ``n_cells`` control cells to predict from.

    With ``model_dir``, the model is loaded from there when it exists, else saved there;
    ``config`` holds ``PerturbFlowConfig`` overrides.
    """
    n_contexts = 2
    adata = pf.datasets.synthetic(
        n_genes=n_genes, n_atoms=6, n_combos=4, n_contexts=n_contexts, n_cells_per_group=60,
        n_control_cells=n_cells // n_contexts, n_heldout_combos=1, seed=seed,
    )
    is_control = (adata.obs["perturbation"] == "control").to_numpy()
    keep = np.zeros(adata.n_obs, dtype=bool)
    for c in adata.obs["cell_type"].unique():  # 300 control cells of each context are fitted
        keep[np.flatnonzero(is_control & (adata.obs["cell_type"] == c).to_numpy())[:300]] = True
    adata.obs.loc[is_control & ~keep, "split"] = "test"
    pf.PerturbFlow.setup_anndata(adata, perturbation_key="perturbation", control_value="control",
                                 context_keys=["cell_type"], split_key="split")
    if model_dir is not None and model_dir.exists():
        model = pf.PerturbFlow.load(model_dir)
    else:
        model = pf.PerturbFlow(adata, backbone=backbone, **{"flow_steps_per_epoch": 25, **(config or {})})
        model.train(max_epochs=4, progress_bar=False, seed=seed)
        if model_dir is not None:
            model.save(model_dir)
    model.correction_scale = 1.0  # the flow runs for every cell (see the module docstring)
    model.flow_contexts = sorted(model.contexts)
    controls = adata[is_control].copy()
    perturbation = min(p for p in adata.obs["perturbation"].unique() if "+" in p and p != "control")
    return model, controls, perturbation


def time_predict(model, controls, perturbation, n_steps, solver, repeats):
    best = None
    for _ in range(repeats):
        timers = Timers()
        timers.wrap(CountVAE, "latent", "encode_s")
        timers.wrap(model, "_transport", "flow_s")
        timers.wrap(CountVAE, "decode_delta", "decode_sample_s")
        start, cpu = time.perf_counter(), time.process_time()
        try:
            pred = model.predict(controls, perturbations=[perturbation], n_steps=n_steps, solver=solver, seed=0)
        finally:
            timers.restore()
        total, total_cpu = time.perf_counter() - start, time.process_time() - cpu
        if best is None or total < best["total_s"]:
            wall = {k: v for k, v in timers.seconds.items() if "_cpu_" not in k}
            best = {"total_s": total, **wall, "other_s": total - sum(wall.values()), "cpu_s": total_cpu,
                    **{k: v for k, v in timers.seconds.items() if "_cpu_" in k}}
            best["cells_per_s"] = pred.n_obs / total
            best["cells_per_cpu_s"] = pred.n_obs / total_cpu
            best["flow_applied"] = all(v == 1.0 for v in pred.uns["perturbflow_prediction"]["flow_correction"].values())
    return best


def scvi_reference(model, controls, repeats):
    """scVI's own prediction path on the same cells: normalised expression, then NB counts."""
    from perturbflow.nn._vae import _anndata

    scvi_model = model.vae.scvi_model
    ref = _anndata(controls.X, model.genes)
    import scvi

    scvi.model.SCVI.setup_anndata(ref)
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        mu = scvi_model.get_normalized_expression(ref, library_size="latent", batch_size=2048)
        theta = torch.as_tensor(model.vae.dispersion(), dtype=torch.float32)
        mu = torch.as_tensor(np.asarray(mu), dtype=torch.float32)
        rate = torch.distributions.Gamma(theta, theta / mu).sample()  # NB as a gamma-Poisson mixture
        torch.poisson(rate)
        best = min(best, time.perf_counter() - start)
    return controls.n_obs / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=20000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--backbone", default="mlp")
    parser.add_argument("--settings", nargs="+", default=["euler:1", "euler:2", "euler:4", "midpoint:20"],
                        help="SOLVER:STEPS pairs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the CI machine has 2 cores)")
    parser.add_argument("--no-scvi", action="store_true", help="skip scVI's reference timing")
    parser.add_argument("--model-dir", type=Path, help="reuse (or save) the trained model here")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "predict_speed.csv")
    parser.add_argument("--config", nargs="*", default=[], help="PerturbFlowConfig overrides, KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, controls, perturbation = synthetic_model(args.cells, args.genes, args.backbone, model_dir=args.model_dir,
                                                  config=parse_config(args.config))
    torch.set_num_threads(args.threads)
    rows = []
    for setting in args.settings:
        solver, n_steps = setting.split(":")
        res = time_predict(model, controls, perturbation, int(n_steps), solver, args.repeats)
        rows.append({"cells": controls.n_obs, "genes": controls.n_vars, "backbone": args.backbone,
                     "config": " ".join(args.config),
                     "solver": solver, "n_steps": int(n_steps), "threads": args.threads, **res})
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
        save_results(pd.DataFrame(rows), args.out)  # after every setting, so a cut-short run keeps its rows
    table = pd.DataFrame(rows)
    if not args.no_scvi:
        table["scvi_cells_per_s"] = scvi_reference(model, controls, args.repeats)
    print(table.to_string(index=False))
    save_results(table, args.out)


if __name__ == "__main__":
    main()
