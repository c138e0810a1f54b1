"""Prediction quality on three real held-out tasks: the model against every baseline.

Usage (from the repository root, with ../shared/data beside it)::

    python benchmarks/quality.py                      # all tasks, default model, writes benchmarks/results/quality.csv
    python benchmarks/quality.py --tasks norman --backbones mlp dit
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts
from tasks import DEFAULT_DATA_DIR, RESULTS_DIR, TASKS, save_results

import perturbflow as pf
from perturbflow.data import context_labels
from perturbflow.metrics import summarize

BASELINES = ["control", "train_mean", "context_mean", "mean_shift", "additive", "linear"]
HEADLINE = ["pearson_delta", "pearson_delta_top20", "mse_top20", "energy_distance", "energy_floor", "mmd",
            "discrimination_l1", "de_overlap", "nb_loglik"]


def run_task(task, backbone: str, seed: int, config: dict) -> tuple[pd.DataFrame, dict]:
    adata = task.adata
    task.setup_model()
    start = time.perf_counter()
    model = pf.PerturbFlow(adata, backbone=backbone, **config)
    model.train(seed=seed, progress_bar=False)
    train_s = time.perf_counter() - start
    controls = task.controls()
    held_out_contexts = context_labels(controls, task.context_keys)
    start = time.perf_counter()
    pred = model.predict(controls, perturbations=task.perturbations, seed=seed)
    predict_s = time.perf_counter() - start
    table = pf.tl.evaluate(pred, adata, real_layer="counts", baselines=BASELINES, seed=seed, copy=True)
    # the sampled integer counts of X, scored too: what rounding to counts costs
    sampled = pf.tl.evaluate(pred, adata, real_layer="counts", pred_layer=None, baselines=[], noise_ceiling=False,
                             seed=seed, copy=True).assign(model="perturbflow_X")
    table = pd.concat([table, sampled], ignore_index=True)
    n_params = sum(p.numel() for p in model.flow.backbone.parameters())
    transfer = model.gene_prior.transfer
    return table, {"train_s": train_s, "predict_s": predict_s, "cells_per_s": pred.n_obs / predict_s,
                   "backbone_params": n_params, "correction_scale": model.correction_scale,
                   "applied_correction_scale": min(model.correction_scale_in(c) for c in set(held_out_contexts)),
                   "transfer_bandwidth": transfer.bandwidth, "transfer_specificity": transfer.specificity}


def main(argv=None, tasks=tuple(TASKS), backbones=("mlp",), out_name="quality.csv", doc=__doc__) -> None:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(tasks), choices=list(TASKS))
    parser.add_argument("--backbones", nargs="+", default=list(backbones))
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / out_name)
    parser.add_argument("--config", nargs="*", default=[], help="PerturbFlowConfig overrides, KEY=VALUE")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the CI machine has 2 cores)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = {k: type(getattr(pf.PerturbFlowConfig(), k))(v) for k, v in (kv.split("=", 1) for kv in args.config)}

    rows = []
    for name in args.tasks:
        task = TASKS[name](args.data_dir)
        for backbone in args.backbones:
            table, timing = run_task(task, backbone, args.seed, config)
            summary = summarize(table).reset_index()
            summary.insert(0, "backbone", backbone)
            summary.insert(0, "task", task.name)
            for k, v in timing.items():
                summary[k] = [v if m == "perturbflow" else float("nan") for m in summary["model"]]
            rows.append(summary)
            show = summary[["model", *[c for c in HEADLINE if c in summary.columns]]]
            print(f"\n== {task.name} / {backbone}: train {timing['train_s']:.0f} s, "
                  f"predict {timing['cells_per_s']:.0f} cells/s, correction scale {timing['correction_scale']}, "
                  f"transfer {timing['transfer_bandwidth']}/{timing['transfer_specificity']}")
            print(show.to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
    out = pd.concat(rows, ignore_index=True)
    save_results(out, args.out)


if __name__ == "__main__":
    main()
