"""``perturbflow demo``: the main job on the built-in synthetic data."""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# Small enough for the whole demo to finish in under a minute on 2 CPU cores; the
# generator's defaults are larger (and the tests rely on them).
DATA_SIZES = {
    "n_genes": 100, "n_atoms": 6, "n_combos": 6, "n_cells_per_group": 40, "n_control_cells": 150, "n_heldout_combos": 2,
}
TRAINING = {"vae_max_steps": 300, "flow_steps_per_epoch": 20, "flow_max_epochs": 10}


def run_demo(out: str | Path, backbone: str = "mlp", seed: int = 0, max_epochs: int | None = None) -> None:
    """Train on synthetic Perturb-seq data, predict held-out combinations, evaluate, plot.

    Writes ``model/``, ``predictions.h5ad``, ``metrics.csv`` and ``metrics.png`` into ``out``.
    The data and the training are kept small (``DATA_SIZES``, ``TRAINING``) so that the demo
    is a first impression of a minute; ``max_epochs`` overrides the epochs of both stages.
    """
    import torch

    n_threads = torch.get_num_threads()
    # the demo's tensors are tiny: one thread beats two on 2 cores, and by far when they are busy
    torch.set_num_threads(1)
    try:
        _run(Path(out), backbone, seed, max_epochs)
    finally:
        torch.set_num_threads(n_threads)


def _run(out: Path, backbone: str, seed: int, max_epochs: int | None) -> None:
    import perturbflow as pf
    from perturbflow.cli import _print_summary, write_atomically

    start = time.perf_counter()
    adata = pf.datasets.synthetic(seed=seed, **DATA_SIZES)
    heldout = list(adata.uns["synthetic"]["heldout_combos"])
    print(
        f"synthetic data: {adata.n_obs} cells x {adata.n_vars} genes, 2 cell types; "
        f"held-out combinations: {', '.join(heldout)}"
    )
    pf.PerturbFlow.setup_anndata(
        adata, perturbation_key="perturbation", control_value="control",
        context_keys=["cell_type"], split_key="split",
    )
    model = pf.PerturbFlow(adata, backbone=backbone, **TRAINING)
    model.train(max_epochs=max_epochs, seed=seed)
    controls = adata[adata.obs["perturbation"] == "control"]
    pred = model.predict(controls, perturbations=heldout, seed=seed)
    table = pf.tl.evaluate(pred, adata, baselines=["control", "train_mean", "additive", "linear"], seed=seed)
    _print_summary(table)

    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "model", lambda p: model.save(p))
    write_atomically(out / "predictions.h5ad", lambda p: pred.write_h5ad(p))
    write_atomically(out / "metrics.csv", lambda p: table.to_csv(p, index=False))
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    pf.pl.metrics(table, ax=axes[:3])
    pf.pl.delta_scatter(pred, adata, heldout[0], real_layer=None, ax=axes[3])
    write_atomically(out / "metrics.png", lambda p: fig.savefig(p, dpi=120, bbox_inches="tight", format="png"))
    plt.close(fig)
    print(f"wrote model/, predictions.h5ad, metrics.csv, metrics.png to {out} in {time.perf_counter() - start:.0f} s")
