"""Speed and memory on one GPU: VAE, flow per backbone and prediction, beside scvi-tools' SCVI.

Usage (from the repository root; no data files needed, the counts are simulated)::

    python benchmarks/gpu.py                       # one GPU, 200k cells x 2000 genes, a few minutes
    python benchmarks/gpu.py --cells 1000000       # larger
    python benchmarks/gpu.py --device cpu --cells 2000 --genes 200 --max-epochs 1 \\
        --flow-epochs 2 --flow-steps 5 --flow-batch-size 16 --threads 1 \\
        --out gpu_dry.csv  # dry run on the CPU, a minute or two

Writes ``benchmarks/results/gpu.csv`` (one row per measurement) and prints it.

Goals of the issue "GPU and multi-GPU verified", on one H200:

- VAE (stage 1) training: at least 500k cells/s;
- DiT flow (stage 2) training: at least 300k cells/s;
- prediction: at least 1M cells/s.

What is measured, on Poisson counts around a log-normal gene profile (a few perturbations
moving 20 genes each, two cell types with their own profile; ``--controls`` of the cells are
controls):

- ``scvi_train``: scvi-tools' SCVI alone (the architecture of perturbflow's stage 1) for the
  same epochs and batch size, the peer; cells/s counts the 90% of cells each epoch fits.
- ``vae_train``: perturbflow's stage 1, :meth:`perturbflow.nn.CountVAE.fit`, as a ratio to SCVI.
- ``flow_train``: :func:`perturbflow.train.fit_flow` for each registered backbone on random
  latents (its speed does not depend on their values); cells/s counts the source cells of the
  sets moved per step. The rate is the marginal one, from a 1-epoch and a ``--flow-epochs`` fit,
  so Lightning's set-up and the OT plans of the data set are not in it.
- ``flow_loader``: the flow's data loader alone (``PairedSetDataset``), the CPU ceiling of
  ``flow_train``.
- ``train``: the whole :meth:`PerturbFlow.train` (stage 1, priors, flow, calibration) with
  ``--backbone``, as a ratio to SCVI's time, like ``speed.py``.
- ``predict``: :meth:`PerturbFlow.predict` of ``--perturbations`` combinations from every
  control cell, its modules on ``--device`` (``predict(..., device=...)``); ``scvi_predict``:
  SCVI's ``posterior_predictive_sample`` of the same cells.
- ``predict_device``: the compute of prediction on the device alone (encode, integrate the
  flow, decode the mean and sample counts, in batches of ``--predict-batch`` cells), the
  ceiling of ``predict``, whose AnnData, priors and count rounding stay on the CPU.

``--precision bf16-mixed`` trains every stage (SCVI, stage 1, the flows, ``train``) under
bfloat16 autocast; the default is 32-bit.

Peak GPU memory (``torch.cuda.max_memory_allocated``) is recorded per measurement;
``ratio_to_scvi`` is a speed ratio (above 1: faster than SCVI; for ``train``, SCVI's time over
perturbflow's). A short fit on 5000 cells warms the device up before the first measurement.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tasks import RESULTS_DIR, save_results

import perturbflow as pf
from perturbflow.backbones import list_backbones
from perturbflow.data import Group, PairedSetDataset
from perturbflow.flow import integrate
from perturbflow.nn import CountVAE, context_statistics
from perturbflow.nn._vae import VALIDATION_FRACTION, default_vae_epochs
from perturbflow.train import fit_flow

GOALS = {"vae_train": 5e5, "flow_train:dit": 3e5, "predict": 1e6}  # cells/s on one H200
EFFECT_GENES = 20
ROWS_PER_CHUNK = 10_000


def synthetic_counts(
    n_cells: int, n_genes: int, n_atoms: int, control_share: float, seed: int
) -> ad.AnnData:
    """Sparse Poisson counts with ``obs['perturbation']`` (``control``, ``G0``...) and ``obs['cell_type']``."""
    rng = np.random.default_rng(seed)
    profile = rng.lognormal(-1.0, 1.5, n_genes)
    profile /= profile.sum()  # (G,) expected share of each gene
    types = np.array(
        [rng.normal(0, 0.3, n_genes) for _ in range(2)]
    )  # (2, G) log-fold per cell type
    effects = np.zeros((n_atoms + 1, n_genes))  # (P+1, G), row 0 the control
    for k in range(1, n_atoms + 1):
        effects[k, rng.choice(n_genes, min(EFFECT_GENES, n_genes), replace=False)] = rng.normal(
            0, 1, EFFECT_GENES
        )
    pert = np.where(rng.random(n_cells) < control_share, 0, rng.integers(1, n_atoms + 1, n_cells))
    cell_type = rng.integers(2, size=n_cells)
    library = rng.lognormal(np.log(2000), 0.3, n_cells)
    blocks = []
    for start in range(0, n_cells, ROWS_PER_CHUNK):
        sl = slice(start, start + ROWS_PER_CHUNK)
        rate = (
            library[sl, None] * profile * np.exp(types[cell_type[sl]] + effects[pert[sl]])
        )  # (n, G)
        blocks.append(sp.csr_matrix(rng.poisson(rate).astype(np.float32)))
    labels = np.array(["control", *(f"G{k}" for k in range(n_atoms))])
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(labels[pert]),
            "cell_type": pd.Categorical(np.array(["A", "B"])[cell_type]),
        },
        index=[f"c{i}" for i in range(n_cells)],
    )
    return ad.AnnData(
        X=sp.vstack(blocks).tocsr(),
        obs=obs,
        var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]),
    )


class Meter:
    """Wall time and peak GPU memory of one block of work (synchronised on CUDA)."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        self.peak_mib = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else float("nan")


def random_groups(
    adata: ad.AnnData, n_latent: int, seed: int
) -> tuple[np.ndarray, np.ndarray, list[Group], int]:
    """Random latents, the context statistics of their controls and one group per (perturbation, cell type)."""
    z = (
        np.random.default_rng(seed).normal(size=(adata.n_obs, n_latent)).astype(np.float32)
    )  # (N, D)
    pert = adata.obs["perturbation"].astype(str).to_numpy()
    ctx = adata.obs["cell_type"].astype(str).to_numpy()
    atoms = sorted(set(pert) - {"control"})
    contexts = sorted(set(ctx))
    stats = np.stack(
        [
            context_statistics(torch.from_numpy(z[(pert == "control") & (ctx == c)])).numpy()
            for c in contexts
        ]
    )
    groups = [
        Group(
            a,
            i,
            np.array([k + 1]),
            np.flatnonzero((pert == a) & (ctx == c)),
            np.flatnonzero((pert == "control") & (ctx == c)),
            np.zeros(n_latent, dtype=np.float32),
        )
        for k, a in enumerate(atoms)
        for i, c in enumerate(contexts)
    ]
    return z, stats, [g for g in groups if len(g.target_idx) and len(g.source_idx)], len(atoms)


def flow_rows(args, adata: ad.AnnData, on_device: dict) -> list[dict]:
    rows = []
    for name in args.backbones or sorted(list_backbones()):
        config = pf.PerturbFlowConfig(
            backbone=name,
            flow_batch_size=args.flow_batch_size,
            flow_steps_per_epoch=args.flow_steps,
        )
        z, stats, groups, n_atoms = random_groups(adata, config.n_latent, args.seed)
        cells_per_epoch = args.flow_steps * args.flow_batch_size * config.set_size
        fits = {}
        for epochs in sorted({1, args.flow_epochs}):
            with Meter(args.device) as m:
                fit_flow(
                    config,
                    n_atoms,
                    groups,
                    [],
                    z,
                    stats,
                    max_epochs=epochs,
                    seed=args.seed,
                    **on_device,
                )
            fits[epochs] = m
        last = fits[args.flow_epochs]
        if args.flow_epochs > 1 and last.seconds > fits[1].seconds:
            rate = (args.flow_epochs - 1) * cells_per_epoch / (last.seconds - fits[1].seconds)
        else:  # one epoch only: set-up included
            rate = args.flow_epochs * cells_per_epoch / last.seconds
        rows.append(
            {
                "measure": "flow_train",
                "backbone": name,
                "cells": args.flow_epochs * cells_per_epoch,
                "seconds": last.seconds,
                "cells_per_s": rate,
                "peak_gpu_mib": last.peak_mib,
            }
        )
        print(f"flow {name}: {rate:,.0f} cells/s", flush=True)
    # the loader alone, as the flow's fit draws it
    dataset = PairedSetDataset(
        z, groups, stats, config.set_size, cells_per_epoch // config.set_size, config.coupling, 0
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.flow_batch_size)
    with Meter("cpu") as m:
        for _ in loader:
            pass
    rows.append(
        {
            "measure": "flow_loader",
            "backbone": "",
            "cells": cells_per_epoch,
            "seconds": m.seconds,
            "cells_per_s": cells_per_epoch / m.seconds,
            "peak_gpu_mib": float("nan"),
        }
    )
    return rows


@torch.no_grad()
def predict_on_device(
    model: pf.PerturbFlow, controls: ad.AnnData, label: str, device: str, batch: int
) -> int:
    """Encode, integrate and decode ``controls`` on ``device`` with ``model``'s modules (decoder sampling,
    no AnnData out, each context's remainder below a whole set left out); returns the cells moved."""
    vae, flow = model.vae.module.to(device), model.flow.to(device)
    atoms = frozenset(label.split("+"))
    atom_ids = torch.tensor(
        [[model.atoms.index(a) + 1 for a in sorted(atoms)]], device=device
    )  # (1, A)
    ctx = controls.obs["cell_type"].astype(str).to_numpy()
    S, done = model.config.set_size, 0
    for c in model.context_stats:
        stats = torch.tensor(model.context_stats[c], device=device)  # (2D,)
        prior = torch.as_tensor(model.prior.prior(atoms, c), device=device).float()  # (D,)
        rows = np.flatnonzero(ctx == c)
        rows = rows[: len(rows) - len(rows) % S]
        for start in range(0, len(rows), batch):
            x = torch.as_tensor(
                controls.X[rows[start : start + batch]].toarray(), device=device
            )  # (n, G)
            n, B = x.shape[0], x.shape[0] // S
            index = torch.zeros(n, 1, dtype=torch.long, device=device)
            z0 = vae.inference(x, batch_index=index)["qz"].loc  # (n, D)
            cond = flow.condition(
                atom_ids.expand(B, -1), stats.expand(B, -1), prior.expand(B, -1)
            )  # (B, C)
            z1 = integrate(
                flow.velocity_field(cond, prior.expand(B, -1)),
                z0.view(B, S, -1),
                n_steps=model.config.n_steps,
                solver=model.config.solver,
            )  # (B, S, D)
            library = x.sum(-1, keepdim=True).clamp(min=1).log()  # (n, 1)
            vae.generative(z1.reshape(n, -1), library, index)["px"].sample()  # (n, G)
            done += n
    model.vae.module.cpu(), model.flow.cpu()
    return done


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--atoms", type=int, default=6, help="single perturbations in the data")
    parser.add_argument("--controls", type=float, default=0.3, help="share of control cells")
    parser.add_argument(
        "--max-epochs", type=int, default=None, help="VAE epochs (default: perturbflow's heuristic)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=1024, help="cells per VAE minibatch (SCVI and stage 1)"
    )
    parser.add_argument(
        "--backbones", nargs="*", default=None, help="flow backbones (default: all registered)"
    )
    parser.add_argument(
        "--backbone", default="dit", help="backbone of the whole-model train and predict"
    )
    parser.add_argument("--flow-epochs", type=int, default=3)
    parser.add_argument("--flow-steps", type=int, default=50, help="flow steps per epoch")
    parser.add_argument(
        "--flow-batch-size", type=int, default=256, help="sets of 32 cells per flow step"
    )
    parser.add_argument(
        "--perturbations", type=int, default=2, help="combinations predicted from each control"
    )
    parser.add_argument(
        "--predict-batch", type=int, default=65_536, help="cells per batch of predict_device"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument(
        "--precision", default=None, help="Lightning precision of every fit, e.g. bf16-mixed (default: 32-bit)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "gpu.csv")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device; use --device cpu for a dry run")
    import scvi

    logging.getLogger("lightning.pytorch").setLevel(
        logging.WARNING
    )  # one line per trainer otherwise
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    on_device = {"accelerator": accelerator, "devices": 1, "progress_bar": False, "precision": args.precision}
    precision = {} if args.precision is None else {"precision": args.precision}  # for SCVI
    start = time.perf_counter()
    adata = synthetic_counts(args.cells, args.genes, args.atoms, args.controls, args.seed)
    print(
        f"{adata.n_obs:,} cells x {adata.n_vars:,} genes ({adata.X.nnz / np.prod(adata.shape):.0%} non-zero) "
        f"simulated in {time.perf_counter() - start:.0f} s",
        flush=True,
    )
    config = pf.PerturbFlowConfig(
        backbone=args.backbone,
        flow_batch_size=args.flow_batch_size,
        flow_steps_per_epoch=args.flow_steps,
    )
    epochs = args.max_epochs or default_vae_epochs(
        adata.n_obs, args.batch_size, config.vae_max_steps
    )
    fitted = int(adata.n_obs * (1 - VALIDATION_FRACTION)) * epochs
    rows = []
    # CUDA context, kernels and allocator warm up here, not in the first measured fit
    genes = adata.var_names.tolist()
    CountVAE.fit(
        adata.X,
        np.arange(min(adata.n_obs, 5000)),
        genes,
        config,
        1,
        batch_size=args.batch_size,
        **on_device,
    )

    peer = ad.AnnData(X=adata.X, obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    scvi.model.SCVI.setup_anndata(peer)
    # the architecture of perturbflow's stage 1 (CountVAE.fit)
    arch = ("n_hidden", "n_latent", "n_layers", "dropout_rate", "gene_likelihood")
    vae = scvi.model.SCVI(peer, dispersion="gene", **{k: getattr(config, k) for k in arch})
    with Meter(args.device) as m:
        vae.train(
            max_epochs=epochs,
            accelerator=accelerator,
            devices=1,
            batch_size=args.batch_size,
            enable_progress_bar=False,
            logger=False,
            enable_checkpointing=False,
            **precision,
        )
    scvi_rate = fitted / m.seconds
    rows.append(
        {
            "measure": "scvi_train",
            "cells": fitted,
            "seconds": m.seconds,
            "cells_per_s": scvi_rate,
            "peak_gpu_mib": m.peak_mib,
        }
    )
    with Meter(args.device) as m:
        CountVAE.fit(
            adata.X,
            np.arange(adata.n_obs),
            genes,
            config,
            epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            **on_device,
        )
    rows.append(
        {
            "measure": "vae_train",
            "cells": fitted,
            "seconds": m.seconds,
            "cells_per_s": fitted / m.seconds,
            "peak_gpu_mib": m.peak_mib,
            "ratio_to_scvi": fitted / m.seconds / scvi_rate,
        }
    )
    print(f"VAE: {fitted / m.seconds:,.0f} cells/s (SCVI {scvi_rate:,.0f})", flush=True)

    rows += flow_rows(args, adata, on_device)

    pf.PerturbFlow.setup_anndata(
        adata, perturbation_key="perturbation", control_value="control", context_keys=["cell_type"]
    )
    model = pf.PerturbFlow(
        adata,
        backbone=args.backbone,
        flow_batch_size=args.flow_batch_size,
        flow_steps_per_epoch=args.flow_steps,
    )
    with Meter(args.device) as m:
        model.train(
            max_epochs=epochs,
            flow_max_epochs=args.flow_epochs,
            accelerator=accelerator,
            devices=1,
            batch_size=args.batch_size,
            seed=args.seed,
            progress_bar=False,
            precision=args.precision,
        )
    scvi_s = rows[0]["seconds"]
    rows.append(
        {
            "measure": "train",
            "backbone": args.backbone,
            "cells": adata.n_obs,
            "seconds": m.seconds,
            "peak_gpu_mib": m.peak_mib,
            "ratio_to_scvi": scvi_s / m.seconds,
        }
    )

    controls = adata[adata.obs["perturbation"] == "control"].copy()
    labels = [f"{a}+{b}" for a, b in zip(model.atoms, model.atoms[1:])][: args.perturbations]
    with Meter(args.device) as m:
        pred = model.predict(controls, perturbations=labels, seed=args.seed, device=args.device)
    predict_rate = pred.n_obs / m.seconds
    ctrl = ad.AnnData(X=controls.X, obs=controls.obs[[]].copy(), var=controls.var[[]].copy())
    scvi.model.SCVI.setup_anndata(ctrl)
    with Meter(args.device) as s:
        for _ in labels:
            vae.posterior_predictive_sample(ctrl, n_samples=1)
    scvi_predict = pred.n_obs / s.seconds
    rows.append(
        {
            "measure": "scvi_predict",
            "cells": pred.n_obs,
            "seconds": s.seconds,
            "cells_per_s": scvi_predict,
            "peak_gpu_mib": s.peak_mib,
        }
    )
    rows.append(
        {
            "measure": "predict",
            "backbone": args.backbone,
            "cells": pred.n_obs,
            "seconds": m.seconds,
            "cells_per_s": predict_rate,
            "peak_gpu_mib": m.peak_mib,
            "ratio_to_scvi": predict_rate / scvi_predict,
            # predict runs no flow in a context whose calibrated correction is 0
            "flow_correction": str(pred.uns["perturbflow_prediction"]["flow_correction"]),
        }
    )
    with Meter(args.device) as m:
        moved = sum(
            predict_on_device(model, controls, label, args.device, args.predict_batch)
            for label in labels
        )
    rows.append(
        {
            "measure": "predict_device",
            "backbone": args.backbone,
            "cells": moved,
            "seconds": m.seconds,
            "cells_per_s": moved / m.seconds,
            "peak_gpu_mib": m.peak_mib,
            "ratio_to_scvi": moved / m.seconds / scvi_predict,
        }
    )

    table = pd.DataFrame(rows)
    table["backbone"] = table["backbone"].fillna("")
    first = [
        "measure",
        "backbone",
        "cells",
        "seconds",
        "cells_per_s",
        "ratio_to_scvi",
        "peak_gpu_mib",
    ]
    table = table[first + [c for c in table.columns if c not in first]]
    key = table["measure"] + np.where(table["measure"] == "flow_train", ":" + table["backbone"], "")
    table["goal_cells_per_s"] = key.map(GOALS)
    table["goal_met"] = np.where(
        table["goal_cells_per_s"].notna(), table["cells_per_s"] >= table["goal_cells_per_s"], None
    )
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    table = table.assign(
        device=gpu,
        n_cells=adata.n_obs,
        n_genes=adata.n_vars,
        vae_epochs=epochs,
        batch_size=args.batch_size,
        precision=args.precision or "32-true",
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    with pd.option_context(
        "display.width", 200, "display.max_columns", 20, "display.float_format", "{:,.3g}".format
    ):
        print(
            table.drop(
                columns=["device", "n_cells", "n_genes", "vae_epochs", "batch_size", "precision"]
            ).to_string(index=False)
        )
    if args.device != "cuda":
        print("(goals are for one H200; on the CPU goal_met says nothing)")
    save_results(table, args.out)


if __name__ == "__main__":
    main()
