"""What any transport in the latent could add: the held-out cells' own latents as the flow's end.

Usage (from the repository root, with ../shared/data beside it)::

    python benchmarks/latent_oracle.py --tasks kang --folds NK CD8T --seeds 0 --out /tmp/oracle.csv

For each fold of Kang (a cell type's stimulated cells held out) and McFaline (a line's
perturbed cells held out) the default model is trained, and its prediction is decoded from
latent end points that no model can know, the held-out perturbed cells' own latents
(encoded by the model's VAE), as the flow's end points would be:

- ``oracle_mean``: each control cell moved by its held-out group's true mean latent shift;
- ``oracle_ot``: each control cell moved to its partner in an optimal-transport matching to
  the held-out group's latents (squared Euclidean cost, the targets resampled to as many
  as the control cells): the end point a perfect flow would reach;
- ``oracle_shape``: the prior's mean move, and each cell's move around it from ``oracle_ot``
  (the part a flow's shape could add where the prior sets the mean);
- ``oracle_ot_direct_X``: counts sampled from the decoder at ``oracle_ot``'s end points
  (``decode="direct"``, as scGen-style models decode), which shows whether the latent itself
  holds the held-out distribution;

beside ``prior_only`` (the default's latent move, no flow) and the default itself. The
other rows are decoded as the default decodes (each cell's own counts moved by its decoded
change, the residual in gene space, the fitted share of clipping's lift) and scored like
``quality.py``. Where ``oracle_ot`` is no better than ``oracle_mean`` on the energy
distance, how cells move around the mean in this latent does not reach the decoded
prediction, and no flow's shape can add to it (benchmarks/RESULTS.md, "Session 17").
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts
from quality import forced_correction, score, scored_prediction
from tasks import DEFAULT_DATA_DIR, FOLDS, fold_task, parse_config, save_results

import perturbflow as pf
import perturbflow.models._prediction as prediction
from perturbflow.metrics import summarize
from perturbflow.models._inputs import aligned_counts, requested_perturbations


def matched_targets(z0: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row of ``z0`` paired with a row of ``targets`` by an exact optimal-transport
    matching (squared Euclidean cost), the targets first resampled to ``len(z0)`` rows (all
    of them, repeated as often as needed, then drawn without replacement)."""
    n, m = len(z0), len(targets)
    pool = np.tile(targets, (-(-n // m), 1))
    pool = pool[rng.choice(len(pool), n, replace=False)]
    cost = ((z0[:, None, :] - pool[None, :, :]) ** 2).sum(-1)
    _, cols = linear_sum_assignment(cost)
    return pool[cols]


@contextmanager
def latent_ends(end_of):
    """Predictions whose latent end points are ``end_of(z0, prior, atom_ids)`` instead of the
    flow's."""
    original = prediction.transport_sets

    def ends(model, z0, atom_ids, stats, prior, *args, **kwargs):
        return end_of(z0, prior.numpy(), tuple(atom_ids)), None

    prediction.transport_sets = ends
    try:
        yield
    finally:
        prediction.transport_sets = original


def run_fold(dataset: str, fold: str, seed: int, data_dir: Path, config: dict) -> pd.DataFrame:
    torch.set_num_threads(1)
    task = fold_task(dataset, fold, data_dir)
    task.setup_model()
    model = pf.PerturbFlow(task.adata, backbone="mlp", **config)
    model.train(seed=seed, progress_bar=False)
    controls = task.controls()
    layer = model.registry.layer
    z_ctrl = model.vae.latent(aligned_counts(controls, model.genes, layer), np.arange(controls.n_obs))
    held = task.adata[(task.adata.obs["split"] == "test").to_numpy()]
    labels = held.obs[task.perturbation_key].astype(str).to_numpy()
    z_all_held = model.vae.latent(aligned_counts(held, model.genes, layer), np.arange(held.n_obs))
    z_held = {tuple(ids): z_all_held[labels == label]  # each held-out group's latents, by its atoms
              for label, _, ids in requested_perturbations(task.perturbations, model.atoms, model.registry)}
    true_shift = {ids: z.mean(0) - z_ctrl.mean(0) for ids, z in z_held.items()}
    rng = np.random.default_rng(seed)

    tables = [scored_prediction(model, controls, task, seed, "perturbflow")]
    with forced_correction(model, 0.0):
        tables.append(scored_prediction(model, controls, task, seed, "prior_only"))

    def shape_around_prior(z0, prior, ids):
        move = matched_targets(z0, z_held[ids], rng) - z0
        return z0 + prior + move - move.mean(0)

    ends = {
        "oracle_mean": lambda z0, prior, ids: z0 + true_shift[ids],
        "oracle_ot": lambda z0, prior, ids: matched_targets(z0, z_held[ids], rng),
        "oracle_shape": shape_around_prior,
    }
    with forced_correction(model, 1.0):
        for name, end_of in ends.items():
            with latent_ends(end_of):
                tables.append(scored_prediction(model, controls, task, seed, name))
        decode, model.config.decode = model.config.decode, "direct"  # counts sampled from the decoder
        with latent_ends(ends["oracle_ot"]):
            direct = model.predict(controls, task.perturbations, seed=seed)
        tables.append(score(direct, task, seed, "oracle_ot_direct_X", pred_layer=None))
        model.config.decode = decode
    summary = summarize(pd.concat(tables, ignore_index=True)).reset_index()
    for col, value in (("seed", seed), ("task", task.name), ("dataset", dataset)):
        summary.insert(0, col, value)
    summary["energy_excess"] = summary["energy_distance"] - summary["energy_floor"]
    print(f"\n== {task.name} / seed {seed}")
    print(summary[["model", "pearson_delta_top20", "energy_excess"]].to_string(index=False), flush=True)
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["kang", "mcfaline"], choices=["kang", "mcfaline"])
    parser.add_argument("--folds", nargs="+", default=None, help="contexts to hold out (default: every fold)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--jobs", type=int, default=2, help="folds trained side by side, one torch thread each")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", nargs="*", default=[], help="PerturbFlowConfig overrides, KEY=VALUE")
    args = parser.parse_args(argv)
    units = [(name, fold, seed) for seed in args.seeds for name in args.tasks
             for fold in FOLDS[name] if not args.folds or fold in args.folds]
    run = partial(run_fold, data_dir=args.data_dir, config=parse_config(args.config))
    rows = []
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for summary in pool.map(run, *zip(*units)):
            rows.append(summary)
            save_results(pd.concat(rows, ignore_index=True), args.out)


if __name__ == "__main__":
    main()
