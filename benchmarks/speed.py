"""Speed and memory of perturbflow beside its peer, scvi-tools' SCVI, in the same run.

Usage (from the repository root, with ../shared/data beside it)::

    python benchmarks/speed.py                # adds a row to benchmarks/results/speed.csv
    python benchmarks/speed.py --config 'backbone_kwargs={"d_model":128}' flow_max_epochs=20

Training: SCVI alone for the epochs perturbflow's stage 1 uses, against perturbflow's whole
``train`` (stage 1 is that same SCVI, stage 2 the flow), as a ratio of wall times.
Prediction: SCVI's ``posterior_predictive_sample`` (encode, decode, sample counts) against
``PerturbFlow.predict`` (encode, integrate the flow, decode, sample), in cells per second.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import pandas as pd
import scvi
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tasks import DEFAULT_DATA_DIR, RESULTS_DIR, TASKS, parse_config
from timers import Timers

import perturbflow as pf
from perturbflow.models import _training
from perturbflow.nn._vae import default_vae_epochs


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="norman", choices=list(TASKS))
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--backbone", default="mlp")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "speed.csv")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the CI machine has 2 cores)")
    parser.add_argument("--config", nargs="*", default=[], help="PerturbFlowConfig overrides, KEY=VALUE")
    args = parser.parse_args()
    config = parse_config(args.config)
    torch.set_num_threads(args.threads)
    task = TASKS[args.task](args.data_dir)
    adata = task.adata
    train = adata[adata.obs["split"] != "test"].copy()
    epochs = default_vae_epochs(train.n_obs, 128, pf.PerturbFlowConfig().vae_max_steps)

    peer = train.copy()
    scvi.model.SCVI.setup_anndata(peer, layer="counts")
    vae = scvi.model.SCVI(peer, n_latent=pf.PerturbFlowConfig().n_latent, gene_likelihood="nb")
    start = time.perf_counter()
    vae.train(max_epochs=epochs, enable_progress_bar=False, logger=False, enable_checkpointing=False)
    scvi_train = time.perf_counter() - start
    controls = task.controls()
    ctrl = controls.copy()
    scvi.model.SCVI.setup_anndata(ctrl, layer="counts")
    start = time.perf_counter()
    vae.posterior_predictive_sample(ctrl, n_samples=1)
    scvi_cells_per_s = ctrl.n_obs / (time.perf_counter() - start)

    task.setup_model()
    model = pf.PerturbFlow(adata, backbone=args.backbone, **config)
    stages = Timers()  # perturbflow's training split: stage 1 (the VAE) and stage 2 (every flow fit)
    stages.wrap(_training, "fit_vae", "vae_s")
    stages.wrap(_training, "fit_flow", "flow_s")  # a probe flow, where one is fitted
    stages.wrap(_training, "fit_flows", "flow_s")  # the flow, or every member of the ensemble
    start = time.perf_counter()
    model.train(progress_bar=False)
    pf_train = time.perf_counter() - start
    stages.restore()
    start = time.perf_counter()
    pred = model.predict(controls, perturbations=task.perturbations, seed=0)
    pf_cells_per_s = pred.n_obs / (time.perf_counter() - start)

    row = {
        "command": " ".join(["python", *sys.argv]),
        "task": task.name, "backbone": args.backbone, "config": " ".join(args.config), "train_cells": train.n_obs, "genes": adata.n_vars,
        "vae_epochs": epochs, "scvi_train_s": scvi_train, "perturbflow_train_s": pf_train,
        "train_time_ratio": pf_train / scvi_train, "perturbflow_vae_s": stages.seconds["vae_s"],
        "perturbflow_flow_s": stages.seconds["flow_s"], "scvi_predict_cells_per_s": scvi_cells_per_s,
        "perturbflow_predict_cells_per_s": pf_cells_per_s,
        "predict_speed_ratio": pf_cells_per_s / scvi_cells_per_s, "peak_rss_mib": peak_rss_mib(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([row])  # a row per run, the earlier runs kept
    if args.out.exists():
        table = pd.concat([pd.read_csv(args.out), table], ignore_index=True)
    table.to_csv(args.out, index=False)
    print(pd.Series(row).to_string())


if __name__ == "__main__":
    main()
