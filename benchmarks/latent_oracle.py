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
- ``oracle_gaussian``: each control cell moved by the optimal-transport map between normals
  fitted to the control cells' and the held-out group's latents (an affine map from the two
  clouds' first two moments; :func:`perturbflow.data.gaussian_map`), and
  ``oracle_gaussian_shape`` its moves around their mean added to the prior's mean move;
- with ``--barycentric``, ``oracle_bary{k}`` and ``oracle_spread{k}``: each control cell
  moved to the barycentric projection of an entropic OT plan to the held-out latents, with
  the regularisation ``k`` times the encoder's posterior variance per dimension, or ``k``
  times the held-out cloud's mean squared distance between two cells (session 20);
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
import sys
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts
from quality import forced_correction, score, scored_prediction
from tasks import DEFAULT_DATA_DIR, FOLDS, fold_task, parse_config, run_units

import perturbflow as pf
import perturbflow.models._prediction as prediction
from perturbflow.data import gaussian_map
from perturbflow.metrics import summarize
from perturbflow.models._inputs import aligned_counts, requested_perturbations


def barycentric_targets(z0: np.ndarray, targets: np.ndarray, epsilon: float, n_iter: int = 300) -> np.ndarray:
    """Each row of ``z0`` moved to the barycentric projection of an entropic optimal-transport
    plan to ``targets`` (squared Euclidean cost, uniform marginals, log-domain Sinkhorn with
    regularisation ``epsilon``): the mean of the targets a cell is coupled with, weighted by
    the plan. With ``epsilon`` near the encoding noise, a move holds what the latents know of
    the cells' states and not their partners' noise (Cuturi 2013; Pooladian & Niles-Weed 2021
    for the barycentric map as an estimator of the transport map)."""
    x, y = torch.from_numpy(z0).double(), torch.from_numpy(targets).double()
    log_k = -torch.cdist(x, y) ** 2 / epsilon  # (n, m)
    log_a, log_b = -np.log(len(x)) * torch.ones(len(x), dtype=x.dtype), -np.log(len(y)) * torch.ones(len(y), dtype=x.dtype)
    f, g = torch.zeros_like(log_a), torch.zeros_like(log_b)
    for _ in range(n_iter):
        f = log_a - torch.logsumexp(log_k + g[None, :], 1)
        g = log_b - torch.logsumexp(log_k + f[:, None], 0)
    plan = torch.softmax(log_k + g[None, :], 1)  # each row's conditional plan
    ends = plan @ y
    return (ends - ends.mean(0) + y.mean(0)).float().numpy()  # the targets' mean, however far Sinkhorn got


def posterior_variance(model, counts) -> float:
    """The encoder's mean posterior variance ``Var[z | x]`` of ``counts``' cells, per latent dimension."""
    module = model.vae.module
    encoder = module.z_encoder
    x = torch.as_tensor(np.asarray(counts.todense() if hasattr(counts, "todense") else counts), dtype=torch.float32)
    x_ = torch.log1p(x) if module.log_variational else x
    with torch.no_grad():
        q = encoder.encoder(x_, torch.zeros(len(x), 1, dtype=torch.long))
        return float((torch.exp(encoder.var_encoder(q)) + encoder.var_eps).mean())


def gaussian_ends(z0: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each row of ``z0`` moved by the optimal-transport map between normals fitted to ``z0``
    and ``targets`` (:func:`perturbflow.data.gaussian_map`)."""
    return gaussian_map(z0.astype(np.float64), targets.astype(np.float64))(z0).astype(np.float32)


def spread(z: np.ndarray) -> float:
    """Twice the summed variance of ``z``'s rows: the mean squared distance between two of them."""
    return float(2 * z.var(0).sum())


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


BARYCENTRIC_NOISE = (2, 8)  # --barycentric: regularisation in posterior variances per dimension
BARYCENTRIC_SPREAD = (0.05, 0.2, 0.5)  # and in the held-out cloud's mean squared distance


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


def run_fold(dataset: str, fold: str, seed: int, data_dir: Path, config: dict, barycentric: bool = False) -> pd.DataFrame:
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

    def around_prior(end_of):
        """End points whose moves from ``z0`` are ``end_of``'s less their mean, plus the prior's shift."""
        def ends(z0, prior, ids):
            move = end_of(z0, z_held[ids]) - z0
            return z0 + prior + move - move.mean(0)
        return ends

    ends = {
        "oracle_mean": lambda z0, prior, ids: z0 + true_shift[ids],
        "oracle_ot": lambda z0, prior, ids: matched_targets(z0, z_held[ids], rng),
        "oracle_shape": around_prior(lambda z0, targets: matched_targets(z0, targets, rng)),
        "oracle_gaussian": lambda z0, prior, ids: gaussian_ends(z0, z_held[ids]),
        "oracle_gaussian_shape": around_prior(gaussian_ends),
    }
    if barycentric:
        noise = posterior_variance(model, aligned_counts(held, model.genes, layer))  # per dimension
        print(f"{task.name} / seed {seed}: posterior variance {noise:.4f} per dimension", flush=True)
        ends |= {f"oracle_bary{k}": partial(lambda k, z0, prior, ids: barycentric_targets(
            z0, z_held[ids], k * noise), k) for k in BARYCENTRIC_NOISE}
        ends |= {f"oracle_spread{k}": partial(lambda k, z0, prior, ids: barycentric_targets(
            z0, z_held[ids], k * spread(z_held[ids])), k) for k in BARYCENTRIC_SPREAD}
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
    parser.add_argument("--barycentric", action="store_true", help="also the entropic-OT barycentric rows")
    args = parser.parse_args(argv)
    units = [(name, fold, seed) for seed in args.seeds for name in args.tasks
             for fold in FOLDS[name] if not args.folds or fold in args.folds]
    run = partial(run_unit, data_dir=args.data_dir, config=parse_config(args.config), barycentric=args.barycentric)
    run_units(run, units, args.out, args.jobs)


def run_unit(unit: tuple, **kwargs) -> pd.DataFrame:
    """``run_fold`` of one (dataset, fold, seed), as ``tasks.run_units`` calls it."""
    return run_fold(*unit, **kwargs)


if __name__ == "__main__":
    main()
