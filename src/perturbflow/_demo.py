"""``perturbflow demo``: the main job on the built-in synthetic data."""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def run_demo(out: str | Path, backbone: str = "mlp", seed: int = 0, max_epochs: int | None = None) -> None:
    """Train on synthetic Perturb-seq data, predict held-out combinations, evaluate, plot.

    Writes ``model/``, ``predictions.h5ad``, ``metrics.csv`` and ``metrics.png`` into ``out``.
    """
    import perturbflow as pf
    from perturbflow.cli import _print_summary, write_atomically

    start = time.perf_counter()
    out = Path(out)
    adata = pf.datasets.synthetic(seed=seed)
    heldout = list(adata.uns["synthetic"]["heldout_combos"])
    print(
        f"synthetic data: {adata.n_obs} cells x {adata.n_vars} genes, 2 cell types; "
        f"held-out combinations: {', '.join(heldout)}"
    )
    pf.PerturbFlow.setup_anndata(
        adata, perturbation_key="perturbation", control_value="control",
        context_keys=["cell_type"], split_key="split",
    )
    model = pf.PerturbFlow(adata, backbone=backbone)
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
