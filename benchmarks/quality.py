"""Prediction quality on real held-out data: every fold, several seeds, every baseline, ablations.

Usage (from the repository root, with ../shared/data beside it)::

    python benchmarks/quality.py            # the full protocol: every fold of Kang (7 cell types)
                                            # and McFaline (3 lines), the Norman combinations,
                                            # Norman's 3 replicates (a new replicate of the same
                                            # screen), seeds 0-2; writes benchmarks/results/quality.csv
    python benchmarks/quality.py --quick    # seed 0, one fold per dataset (screening ideas)
    python benchmarks/quality.py --tasks kang --folds B NK --seeds 0 --out /tmp/q.csv

Each (fold, seed) trains the default model once and scores, on the same held-out real cells:

- ``perturbflow``: the model's prediction (expected counts, like the baselines);
  ``perturbflow_X``: its sampled integer counts, as a user receives them;
- ablations of the same trained model: ``prior_only`` (the flow's correction off, the prior's
  latent shift decoded per cell), ``flow_full`` (the whole correction in every context) and
  ``flow_mean`` / ``flow_shape`` (in a context new to the flow, only the mean of its
  correction, or only its shape: ``new_context_flow``), ``flow_own_context`` (the whole
  correction, in a new context conditioned on its own control latents' statistics instead
  of the learned null context: ``new_context_condition="own"``); the decoding's bounds
  ``exact_zeroing`` (``exact_mean=True`` everywhere: each group's mean kept where its cells'
  moves add up to) and ``mean_clipped`` (``exact_mean=False``: cells moved below 0 clipped
  without restoring the group's mean), and ``decoding_chosen`` (in a new context exact or
  clipped, whichever scored better on the measured contexts: sessions 13-15's default);
  with ``--ablation`` also ``flow_only`` (a model trained without the baseline prior);
  with ``--history`` also earlier sessions' defaults: ``gene_space_prior`` (the gene-space
  transfer of the mean change added to every cell, sessions 1-4), ``prior_mean`` (each
  group's mean change from the gene-space transfer, each cell's deviation from it decoded),
  ``exact_thinning`` / ``exact_shift`` (the exact mean by the other ``exact_mean_by``; the
  shift was session 11's default), ``exact_half`` (half of clipping's lift put back) and
  ``residual_whole`` (each group's gene-space residual lent to other contexts whole,
  sessions 1-14);
- ``latent_shift``: scGen's latent arithmetic with the model's own VAE (the decoder's means;
  ``latent_shift_X``: counts sampled from the decoder, as scGen-style models give them;
  ``decoded_control_X``: counts sampled from the decoder at each source cell's own latent,
  no perturbation at all, which shows what of ``latent_shift_X``'s score comes from the
  decoder's reconstruction differing from the real control cells' mean);
- the gene-space baselines (``additive_exact`` among them) and the split-half noise ceiling.

``python benchmarks/report.py benchmarks/results/quality.csv --folds`` prints the mean and
spread over seeds per fold and overall.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts
from tasks import DEFAULT_DATA_DIR, FOLDS, RESULTS_DIR, fold_task, parse_config, run_units

import perturbflow as pf
from perturbflow.data import context_labels
from perturbflow.metrics import summarize
from perturbflow.models._inputs import aligned_counts
from perturbflow.models._prior import BaselinePrior
from perturbflow.train import choose_decoding, fitted_share

BASELINES = ["control", "train_mean", "context_mean", "mean_shift", "additive", "additive_exact", "linear"]
HEADLINE = ["pearson_delta", "pearson_delta_top20", "mse_top20", "energy_distance", "energy_floor", "mmd",
            "discrimination_l1", "de_overlap", "nb_loglik"]


@contextmanager
def forced_correction(model, scale: float):
    """The model with its flow's whole correction (mean included) forced to ``scale`` in
    every context."""
    model.correction_scale_in = lambda context, mean=None: scale  # an instance attribute hides the method
    model.correction_part_in = lambda context, mean=None: "all"
    try:
        yield model
    finally:
        del model.correction_scale_in, model.correction_part_in


def score(pred, task, seed: int, name: str, pred_layer="expected") -> pd.DataFrame:
    return pf.tl.evaluate(pred, task.adata, real_layer="counts", pred_layer=pred_layer, baselines=[],
                          noise_ceiling=False, seed=seed, copy=True).assign(model=name)


def scored_prediction(model, controls, task, seed: int, name: str) -> pd.DataFrame:
    """``model``'s prediction for ``controls`` as it is configured now, scored as ``name``."""
    return score(model.predict(controls, task.perturbations, seed=seed), task, seed, name)


def unshifted_samples(model, controls, pred, seed: int):
    """``pred`` with its counts sampled from the decoder at each source cell's own latent, not
    moved at all: what decoder-sampled counts score against the real control cells with no
    perturbation in them (the reconstruction's difference from those cells' mean)."""
    counts = aligned_counts(controls, model.genes, model.registry.layer)
    rows = controls.obs_names.get_indexer(pred.obs["source_cell"])
    latent = model.vae.latent(counts, rows)
    X, _ = model.vae.decode(latent, np.asarray(counts[rows].sum(axis=1)).ravel().astype(np.float32), seed=seed)
    out = pred.copy()
    out.X = X
    return out


def earlier_defaults(model, controls, task, seed: int, config: dict) -> list[pd.DataFrame]:
    """The rows of earlier sessions' defaults and decodings, scored with ``--history``
    (each one more prediction of the same trained model)."""
    def scored(name):
        return scored_prediction(model, controls, task, seed, name)

    tables = []
    model.config.gene_offset = "baseline"  # sessions 1-4: the gene-space transfer added to every cell
    tables.append(scored("gene_space_prior"))
    model.config.gene_offset = "prior_mean"  # the group's mean change from gene space, each cell's deviation decoded
    tables.append(scored("prior_mean"))
    model.config.gene_offset = config.get("gene_offset", "residual")
    chosen, by = model.config.exact_mean, model.config.exact_mean_by
    for forced, how, name in ((True, "thinning", "exact_thinning"), (True, "shift", "exact_shift"),
                              (0.5, by, "exact_half")):
        model.config.exact_mean, model.config.exact_mean_by = forced, how
        tables.append(scored(name))
    model.config.exact_mean, model.config.exact_mean_by = chosen, by
    shrunk = model.residual_prior  # the residuals carried to other contexts whole, as before session 15
    model.residual_prior = BaselinePrior(shrunk.shifts, shrunk.sizes, shrunk.transfer, carried_scale=1.0)
    tables.append(scored("residual_whole"))
    model.residual_prior = shrunk
    return tables


def run_task(task, backbone: str, seed: int, config: dict, ablation: bool = False,
             history: bool = False) -> tuple[pd.DataFrame, dict]:
    adata = task.adata
    task.setup_model()
    start = time.perf_counter()
    model = pf.PerturbFlow(adata, backbone=backbone, **config)
    model.train(seed=seed, progress_bar=False)
    train_s = time.perf_counter() - start
    controls = task.controls()
    held_out_contexts = set(context_labels(controls, task.context_keys))
    start = time.perf_counter()
    pred = model.predict(controls, perturbations=task.perturbations, seed=seed)
    predict_s = time.perf_counter() - start
    tables = [
        pf.tl.evaluate(pred, adata, real_layer="counts", baselines=BASELINES, seed=seed, copy=True),
        score(pred, task, seed, "perturbflow_X", pred_layer=None),
    ]
    for name, scale in (("prior_only", 0.0), ("flow_full", 1.0)):
        with forced_correction(model, scale):
            tables.append(scored_prediction(model, controls, task, seed, name))
    for part in ("mean", "shape"):  # in a context new to the flow, one part of its correction
        model.config.new_context_flow = part
        tables.append(scored_prediction(model, controls, task, seed, f"flow_{part}"))
    model.config.new_context_flow = config.get("new_context_flow", "auto")
    with forced_correction(model, 1.0):  # the whole transport, under the new context's own statistics
        model.config.new_context_condition = "own"
        tables.append(scored_prediction(model, controls, task, seed, "flow_own_context"))
        model.config.new_context_condition = config.get("new_context_condition", "null")
    chosen = model.config.exact_mean
    for forced, name in ((True, "exact_zeroing"), (False, "mean_clipped")):  # each decoding, everywhere
        model.config.exact_mean = forced
        tables.append(scored_prediction(model, controls, task, seed, name))
    measured = [c for c in model.decoding_scores if c not in held_out_contexts]
    model.config.exact_mean = choose_decoding(model.decoding_scores, measured) == "exact"  # sessions 13-15's rule
    tables.append(scored_prediction(model, controls, task, seed, "decoding_chosen"))
    model.config.exact_mean = chosen
    if history:
        tables += earlier_defaults(model, controls, task, seed, config)
    scgen = model.predict(controls, task.perturbations, seed=seed, method="latent_shift")
    tables += [score(scgen, task, seed, "latent_shift"), score(scgen, task, seed, "latent_shift_X", pred_layer=None),
               score(unshifted_samples(model, controls, scgen, seed), task, seed, "decoded_control_X", pred_layer=None)]
    if ablation:
        flow_only = pf.PerturbFlow(adata, backbone=backbone, **{**config, "residual_prior": False})
        flow_only.train(seed=seed, progress_bar=False)
        tables.append(score(flow_only.predict(controls, task.perturbations, seed=seed), task, seed, "flow_only"))
    n_params = sum(p.numel() for f in getattr(model.flow, "members", [model.flow]) for p in f.backbone.parameters())
    transfer = model.gene_prior.transfer
    applied = pred.uns["perturbflow_prediction"]["flow_correction"]
    parts = pred.uns["perturbflow_prediction"]["flow_correction_part"]
    return pd.concat(tables, ignore_index=True), {
        "train_s": train_s, "predict_s": predict_s, "cells_per_s": pred.n_obs / predict_s,
        "backbone_params": n_params, "correction_scale": model.correction_scale,
        "applied_correction_scale": min(applied.get(c, 0.0) for c in held_out_contexts),
        "new_context_part": ",".join(sorted({parts[c] if applied.get(c) else "off" for c in held_out_contexts})),
        "new_context_scores": json.dumps(model.new_context_scores),  # the probe's, per held-out training context
        "context_means": json.dumps({c: np.round(model.control_latent_mean(c).astype(np.float64), 4).tolist()
                                     for c in model.context_stats}),  # each context's control latent mean
        "flow_contexts": ",".join(model.flow_contexts),  # the contexts whose perturbed cells the flow saw
        "exact_mean_applied": ",".join(sorted({str(pred.uns["perturbflow_prediction"]["exact_mean"].get(c))
                                               for c in held_out_contexts})),
        "decoding_scores": json.dumps(model.decoding_scores),  # per measured context, each predicted from the others
        "exact_fitted_share": fitted_share(model.decoding_scores, measured),  # the share put back in a new context
        "residual_carried": model.residual_prior.carried_scale,  # the share of the residual carried between contexts
        "transfer_bandwidth": transfer.bandwidth, "transfer_specificity": transfer.specificity,
    }


def run_unit(unit: tuple, data_dir: Path, config: dict, ablation: bool, threads: int,
             history: bool = False) -> pd.DataFrame:
    """Train and score one (dataset, fold, backbone, seed): the rows of its summary table."""
    name, fold, backbone, seed = unit
    torch.set_num_threads(threads)
    task = fold_task(name, fold, data_dir)
    table, timing = run_task(task, backbone, seed, config, ablation, history)
    summary = summarize(table).reset_index()
    for col, value in (("seed", seed), ("backbone", backbone), ("task", task.name), ("dataset", name)):
        summary.insert(0, col, value)
    for k, v in timing.items():
        summary[k] = [v if m == "perturbflow" else float("nan") for m in summary["model"]]
    show = summary[["model", *[c for c in HEADLINE if c in summary.columns]]]
    print(f"\n== {task.name} / {backbone} / seed {seed}: train {timing['train_s']:.0f} s, "
          f"predict {timing['cells_per_s']:.0f} cells/s, correction applied "
          f"{timing['applied_correction_scale']} (calibrated {timing['correction_scale']}; in the new "
          f"context: {timing['new_context_part']}), "
          f"transfer bandwidth {timing['transfer_bandwidth']}")
    print(show.to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
    return summary


def main(argv=None, tasks=tuple(FOLDS), backbones=("mlp",), out_name="quality.csv", doc=__doc__) -> None:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(tasks), choices=list(FOLDS))
    parser.add_argument("--folds", nargs="+", default=None, help="contexts to hold out (default: every fold)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="seed 0 and the first fold of each dataset")
    parser.add_argument("--ablation", action="store_true", help="also train a model without the baseline prior")
    parser.add_argument("--history", action="store_true",
                        help="also score earlier sessions' defaults and decodings (more predictions per run)")
    parser.add_argument("--backbones", nargs="+", default=list(backbones))
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--config", nargs="*", default=[], help="PerturbFlowConfig overrides, KEY=VALUE")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in all (the CI machine has 2 cores)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="runs side by side, each with threads/jobs torch threads (1: one after another)")
    args = parser.parse_args(argv)
    config = parse_config(args.config)
    seeds = [0] if args.quick else args.seeds
    out = args.out or RESULTS_DIR / (out_name.replace(".csv", "_quick.csv") if args.quick else out_name)
    units = []  # seed by seed, so that a stopped run has every fold of its first seeds
    for seed in seeds:
        for name in args.tasks:
            folds = FOLDS[name][:1] if args.quick else [f for f in FOLDS[name] if not args.folds or f in args.folds]
            units += [(name, fold, backbone, seed) for fold in folds for backbone in args.backbones]
    threads = max(1, args.threads // args.jobs)
    run = partial(run_unit, data_dir=args.data_dir, config=config, ablation=args.ablation, threads=threads,
                  history=args.history)

    run_units(run, units, out, args.jobs)

if __name__ == "__main__":
    main()
