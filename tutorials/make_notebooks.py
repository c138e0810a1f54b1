"""Write the tutorial notebooks (outputs empty) from the cell sources below.

Run ``python tutorials/make_notebooks.py`` after editing; the notebooks are the output of
this script, so edit here rather than in Jupyter. ``tests/test_tutorials.py`` executes them.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent
KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}

FAST_NOTE = (
    "> **Training settings.** To run in a minute or two on a laptop CPU (and in CI), this tutorial "
    "trains with `max_epochs={epochs}` and `flow_steps_per_epoch=20`. The defaults "
    "(`max_epochs=None`, `flow_steps_per_epoch=50`) train much longer (the flow for about 3000 "
    "steps) and give better predictions: drop these arguments for real use."
)

SETUP = """\
import os
from pathlib import Path

import perturbflow as pf

# Figures are written here (the tests point this at a temporary folder).
FIGURE_DIR = Path(os.environ.get("PERTURBFLOW_FIGURE_DIR", "figures"))
FIGURE_DIR.mkdir(parents=True, exist_ok=True)"""


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


def quickstart() -> list:
    return [
        md("""
# 01 Quickstart: train, predict, evaluate, plot

This tutorial runs the whole perturbflow workflow on the built-in synthetic Perturb-seq data,
whose true effects are known: single-gene perturbations (`G0`, `G1`, ...) and two-gene
combinations in two cell types. Some combinations are held out (`obs['split'] == 'test'`);
the model never sees them, and we predict them from control cells.
"""),
        code(SETUP),
        md("""
## Data

`pf.datasets.synthetic` returns raw counts. `pf.pp.check_counts` checks they are counts, and
`pf.pp.parse_perturbations` writes each cell's canonical perturbation (atoms sorted, `A+B`) and
its number of atoms into `.obs`.
"""),
        code("""
adata = pf.datasets.synthetic(
    n_genes=100, n_atoms=6, n_combos=6, n_cells_per_group=50, n_control_cells=150, seed=0
)
heldout = list(adata.uns["synthetic"]["heldout_combos"])
pf.pp.check_counts(adata)
pf.pp.parse_perturbations(adata, "perturbation", "control")
print(adata)
print("held-out combinations:", heldout)
adata.obs[["perturbation", "perturbation_atoms", "n_perturbation_atoms", "split"]].drop_duplicates().head(8)
"""),
        md("""
## Train

`setup_anndata` records which columns hold the perturbation, the context and the split.
`pf.tl.fit` builds and trains the model: a count VAE (scvi-tools) first, then a rectified flow
in its latent space that carries control cells to perturbed cells.
"""),
        md(FAST_NOTE.format(epochs=15)),
        code("""
pf.PerturbFlow.setup_anndata(
    adata, perturbation_key="perturbation", control_value="control",
    context_keys=["cell_type"], split_key="split",
)
model = pf.tl.fit(adata, max_epochs=15, flow_steps_per_epoch=20, seed=0)
model
"""),
        md("""
## Predict and evaluate

Predictions start from real control cells: each one is encoded, moved along the flow under the
perturbation, and decoded to counts. `pf.tl.evaluate` scores the prediction against the real
held-out cells **beside simple baselines** fitted on the same training cells (the additive
model is the one to beat for combinations) and a split-half noise ceiling.
"""),
        code("""
controls = adata[adata.obs["perturbation"] == "control"].copy()
pred = pf.tl.predict(model, controls, heldout, seed=0)
table = pf.tl.evaluate(pred, adata, baselines=["control", "train_mean", "additive"])
table.groupby("model", sort=False)[["pearson_delta_top20", "mse_top20", "energy_distance"]].mean()
"""),
        md("## Plots\n\nEach plot takes `ax=`, `show=` and `save=` and returns its axes."),
        code("""pf.pl.metrics(pred, save=FIGURE_DIR / "01_metrics.png");"""),
        code("""pf.pl.delta_scatter(pred, adata, heldout[0], real_layer=None, save=FIGURE_DIR / "01_delta_scatter.png");"""),
        md("""
Predicted and real cells on one UMAP (computed with scanpy on log1p-normalised counts): a good
prediction lands on the real cells of its perturbation.
"""),
        code("""pf.pl.embedding(pred, adata, save=FIGURE_DIR / "01_embedding.png");"""),
        md("""
The flow paths of a few control cells in the latent space (first two principal components).
Given the whole dataset, the plot also shows the real cells of the perturbation, which the
model never saw:
"""),
        code("""pf.pl.trajectories(model, adata, heldout[0], n_cells=20, save=FIGURE_DIR / "01_trajectories.png");"""),
        md("""
## The latent space and the next experiment

`pf.tl.latent` writes the latent representation into `.obsm`, ready for scanpy.
`pf.tl.rank_perturbations` predicts untested combinations and ranks them by the size of their
predicted effect, a starting point for choosing the next experiment.
"""),
        code("""
pf.tl.latent(adata, model)
adata.obsm["X_perturbflow"].shape
"""),
        code("""
import itertools

measured = set(adata.obs["perturbation_atoms"])
atoms = adata.uns["perturbation_atoms"]["atoms"]
candidates = [f"{a}+{b}" for a, b in itertools.combinations(atoms, 2) if f"{a}+{b}" not in measured]
ranking = pf.tl.rank_perturbations(model, controls, candidates, n_cells=100)
ranking.head()
"""),
        md("## Save and load\n\nA model is a folder; loading checks the genes of new data against the model's."),
        code("""
model.save("quickstart_model", overwrite=True)
loaded = pf.PerturbFlow.load("quickstart_model")
loaded
"""),
    ]


def combinatorial() -> list:
    return [
        md("""
# 02 Combinatorial perturbations: Norman 2019 against the additive model

Norman et al. (2019) activated genes in K562 cells one at a time and two at a time (CRISPRa).
Predicting a two-gene combination from its single genes is the classic test, and the additive
model (the sum of the two single effects) is a strong baseline. Here we hold out combinations
whose two single genes were both measured, and compare perturbflow with it.
"""),
        md("""
**Parameters.** In real use the data come from the `norman2019` manifest
(`pf.datasets.load("norman2019")` downloads scPerturb's file once and checks it). When the
environment variable `PERTURBFLOW_DATA_DIR` is set (as in the tests), a small Norman subset from
that folder is read instead.
"""),
        code(SETUP + """

DATA_DIR = os.environ.get("PERTURBFLOW_DATA_DIR")
MAX_EPOCHS = 15
N_HELDOUT = 4"""),
        code("""
import anndata as ad
import scanpy as sc

if DATA_DIR:
    # PerturBench's development file: the Norman 2019 cells, with integer counts recovered in layers['counts'].
    adata = ad.read_h5ad(Path(DATA_DIR) / "perturbench_devel_norman2019_mcfaline2023.h5ad")
    adata = adata[(adata.obs["dataset"] == "norman19") & adata.obs["counts_recovered_exact"].astype(bool)].copy()
    perturbation_key, control_value, layer = "perturbation", "control", "counts"
else:
    adata = pf.datasets.load("norman2019")
    info = adata.uns["perturbflow_dataset"]
    perturbation_key, control_value = info["perturbation_key"], info["control_value"]
    layer = info.get("counts_layer")
    separator = info.get("combination_separator", "+")
    adata.obs[perturbation_key] = adata.obs[perturbation_key].astype(str).str.replace(separator, "+", regex=False)
    # Keep the 2,000 most variable genes (chosen on log-normalised counts).
    lognorm = sc.AnnData((adata.layers[layer] if layer else adata.X).copy())  # normalised in place
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    sc.pp.highly_variable_genes(lognorm, n_top_genes=2000)
    adata = adata[:, lognorm.var["highly_variable"].to_numpy()].copy()
print(adata)
"""),
        md("""
## Choose held-out combinations

`pf.pp.parse_perturbations` gives each cell's set of atoms. We hold out combinations whose two
single genes were both measured (so the additive model can be fitted) and keep everything else
for training.
"""),
        code("""
import numpy as np

pf.pp.parse_perturbations(adata, perturbation_key, control_value)
labels = adata.obs["perturbation_atoms"].astype(str)
singles = set(labels[adata.obs["n_perturbation_atoms"] == 1])
doubles = sorted(set(labels[adata.obs["n_perturbation_atoms"] == 2]))
eligible = [d for d in doubles if all(a in singles for a in d.split("+"))]
heldout = eligible[:N_HELDOUT]
adata.obs["split"] = np.where(labels.isin(heldout), "test", "train")
print(f"{len(singles)} singles, {len(doubles)} doubles; held out: {heldout}")
"""),
        md("## Train"),
        md(FAST_NOTE.format(epochs=15)),
        code("""
pf.PerturbFlow.setup_anndata(
    adata, perturbation_key=perturbation_key, control_value=control_value, layer=layer, split_key="split"
)
model = pf.tl.fit(adata, max_epochs=MAX_EPOCHS, flow_steps_per_epoch=20, seed=0)
"""),
        md("""
## Predict the held-out combinations and compare with the additive model

All rows of the table are scored by the same code on the same held-out cells. Higher is better
for the Pearson correlations of the change from control, lower for the errors and distances.
The energy distance of two samples of one distribution is not 0 but `energy_floor`, which
depends on how many cells each side has: read each energy distance as its excess over the floor.
"""),
        code("""
controls = adata[adata.obs[perturbation_key] == control_value].copy()
pred = pf.tl.predict(model, controls, heldout, seed=0)
table = pf.tl.evaluate(pred, adata, baselines=["control", "train_mean", "additive"])
columns = ["pearson_delta", "pearson_delta_top20", "mse_top20", "energy_distance", "energy_floor"]
summary = table.groupby("model", sort=False)[columns].mean()
summary
"""),
        code("""
# Per combination: perturbflow against the additive model.
per_combo = table[table["model"].isin(["perturbflow", "additive"])].pivot_table(
    index="perturbation", columns="model", values="pearson_delta_top20"
)
per_combo
"""),
        code("""pf.pl.metrics(pred, save=FIGURE_DIR / "02_metrics.png");"""),
        code("""pf.pl.delta_scatter(pred, adata, heldout[0], real_layer=layer, save=FIGURE_DIR / "02_delta_scatter.png");"""),
        md("""
With the short training used here, the model may not beat the additive model on every metric;
that comparison is the point of this tutorial. Train with the defaults before drawing
conclusions, and look at the distribution metrics (energy distance) as well as the mean-level ones.

## Which combination next?

`pf.tl.rank_perturbations` predicts combinations that were never measured and ranks them by the
size of the predicted change.
"""),
        code("""
import itertools

candidates = [f"{a}+{b}" for a, b in itertools.combinations(sorted(singles), 2) if f"{a}+{b}" not in doubles]
# A random 30 of them keep this quick; rank them all in real use.
candidates = list(np.random.default_rng(0).choice(candidates, size=min(30, len(candidates)), replace=False))
ranking = pf.tl.rank_perturbations(model, controls, candidates, n_cells=100)
ranking.head(10)
"""),
    ]


def context_transfer() -> list:
    return [
        md("""
# 03 Context transfer: interferon-beta in a cell type never seen stimulated

Kang et al. (2018) stimulated PBMCs with interferon-beta. We hide the stimulated CD14+
monocytes from training and predict them from the control CD14+ monocytes: the model must
transfer the response learned in the other cell types. The baselines to beat are the mean
shift (the response averaged over the other cell types, added to the new cell type's
controls) and the training mean (all stimulated cells pooled).

perturbflow starts from a *context transfer*: the other cell types' responses weighted by
how similar their control cells are to the new cell type's control cells. How sharply
similarity counts is chosen by leave-one-cell-type-out cross-validation on the training
cell types, so nothing is tuned for this dataset; when cell types respond alike, the
choice falls back to the plain mean shift.
"""),
        md("""
**Parameters.** In real use the data come from the `kang2018` manifest (`pf.datasets.load("kang2018")`).
When `PERTURBFLOW_DATA_DIR` is set (as in the tests), scGen's Kang validation file from that
folder is read instead; its labels differ (`control` / `stimulated`, `CD14+Mono`).
"""),
        code(SETUP + """

DATA_DIR = os.environ.get("PERTURBFLOW_DATA_DIR")
MAX_EPOCHS = 15
N_TOP_GENES = 2000"""),
        code("""
import anndata as ad
import numpy as np
import scanpy as sc

if DATA_DIR:
    adata = ad.read_h5ad(Path(DATA_DIR) / "kang2018_ifnb_pbmc_scgen_valid.h5ad")
    perturbation_key, control_value, stimulated, layer = "condition", "control", "stimulated", "counts"
    cell_type_key, heldout_type = "cell_type", "CD14+Mono"
else:
    adata = pf.datasets.load("kang2018")
    info = adata.uns["perturbflow_dataset"]
    perturbation_key, control_value, layer = info["perturbation_key"], info["control_value"], info.get("counts_layer")
    stimulated = "stim"
    cell_type_key, heldout_type = info["context_keys"][0], "CD14+ Monocytes"

# Keep the most variable genes (chosen on log-normalised counts): faster, and the response lives there.
lognorm = sc.AnnData((adata.layers[layer] if layer else adata.X).copy())  # normalised in place
sc.pp.normalize_total(lognorm, target_sum=1e4)
sc.pp.log1p(lognorm)
sc.pp.highly_variable_genes(lognorm, n_top_genes=N_TOP_GENES)
adata = adata[:, lognorm.var["highly_variable"].to_numpy()].copy()
adata.obs[perturbation_key] = adata.obs[perturbation_key].astype(str)
print(adata)
adata.obs.groupby([cell_type_key, perturbation_key], observed=True).size().unstack()
"""),
        md("## Hold out the stimulated cells of one cell type"),
        code("""
is_heldout = (adata.obs[cell_type_key] == heldout_type) & (adata.obs[perturbation_key] == stimulated)
adata.obs["split"] = np.where(is_heldout, "test", "train")
pf.PerturbFlow.setup_anndata(
    adata, perturbation_key=perturbation_key, control_value=control_value, layer=layer,
    context_keys=[cell_type_key], split_key="split",
)
"""),
        md(FAST_NOTE.format(epochs=15)),
        code("""model = pf.tl.fit(adata, max_epochs=MAX_EPOCHS, flow_steps_per_epoch=20, seed=0)"""),
        md("""
## Predict the held-out cell type

The control cells of the held-out cell type describe its context; the model carries them
along the flow under the stimulation.
"""),
        code("""
controls = adata[(adata.obs[cell_type_key] == heldout_type) & (adata.obs[perturbation_key] == control_value)].copy()
pred = pf.tl.predict(model, controls, [stimulated], seed=0)
table = pf.tl.evaluate(pred, adata, baselines=["control", "train_mean", "mean_shift"])
table.groupby("model", sort=False)[["pearson_delta", "pearson_delta_top20", "mse_top20", "energy_distance"]].mean()
"""),
        code("""pf.pl.metrics(pred, save=FIGURE_DIR / "03_metrics.png");"""),
        code("""pf.pl.delta_scatter(pred, adata, stimulated, real_layer=layer, save=FIGURE_DIR / "03_delta_scatter.png");"""),
        md("Predicted and real cells of the held-out cell type on one UMAP; `group` tells the predicted stimulated cells from the real ones:"),
        code("""
real = adata[adata.obs[cell_type_key] == heldout_type]
pf.pl.embedding(pred, real, real_layer=layer, color=["source", "group"], save=FIGURE_DIR / "03_embedding.png");
"""),
        md("""
The transfer the cross-validation chose (a finite bandwidth means similar cell types
count more). With 3 or more measured cell types, each cell type's bandwidth is chosen near
it: from the cross-validated errors of the measured cell types most similar to it, along
the principal axes of their cells (the space in which the energy distance compares cells).
The prediction records the bandwidth it used. How much of each perturbation's own response
is kept, against the response pooled over perturbations, is set per perturbation by
empirical Bayes: a strong response that is the same in every cell type is kept whole, a
weak or inconsistent one shrinks:
"""),
        code("""
transfer = model.gene_prior.transfer
print(f"bandwidth chosen over all cell types: {transfer.bandwidth}")
print(f"bandwidth used for {heldout_type}: {pred.uns['perturbflow_prediction']['context_bandwidth']}")
"""),
        md("""
Each predicted cell moves by what the VAE's decoder gives for moving *that cell's* latent by
the transferred latent shift, so cells of one type respond differently by their state. The
flow's own correction beyond that move is calibrated on held-out training groups of cell
types the flow has seen, which say nothing about a new one. In a new cell type the flow runs
under its learned null context: its whole move where the training data measured at least 5
cell types, half of its shape around the transferred mean with fewer
(`new_context_fraction` sets another share). The prediction records what was applied in
each context, and which part:
"""),
        code("""
info = pred.uns["perturbflow_prediction"]
print(info["flow_correction"], info["flow_correction_part"])
"""),
    ]


def backbones() -> list:
    return [
        md("""
# 04 Choosing a backbone, and adding your own

The velocity network of the flow (the *backbone*) is chosen by name. Four are built in:

- `mlp`: a FiLM-conditioned residual MLP on each cell (the state-vector baseline);
- `dit`: a transformer with adaLN-Zero conditioning;
- `settransformer`: attention across the cells of a set (permutation-equivariant);
- `ssm`: a state-space sequence layer in plain PyTorch.

We train each on the same synthetic data, compare them on held-out combinations, then
register a new backbone.
"""),
        code(SETUP + """

MAX_EPOCHS = 10
# Small networks keep this comparison quick; the same settings for every backbone keep it fair.
SMALL = {"n_latent": 10, "flow_steps_per_epoch": 20, "backbone_kwargs": {"depth": 2}}"""),
        code("""
from perturbflow.backbones import list_backbones

list_backbones()
"""),
        code("""
adata = pf.datasets.synthetic(
    n_genes=80, n_atoms=5, n_combos=5, n_cells_per_group=40, n_control_cells=120, n_heldout_combos=2, seed=1
)
heldout = list(adata.uns["synthetic"]["heldout_combos"])
pf.PerturbFlow.setup_anndata(
    adata, perturbation_key="perturbation", control_value="control",
    context_keys=["cell_type"], split_key="split",
)
controls = adata[adata.obs["perturbation"] == "control"].copy()
"""),
        md(FAST_NOTE.format(epochs=10) + " Here the backbones are also made shallower (`depth=2`) and the latent smaller (`n_latent=10`) than their defaults."),
        code("""
import time

import pandas as pd

tables, seconds = [], {}
for name in ["mlp", "dit", "settransformer", "ssm"]:
    start = time.perf_counter()
    model = pf.tl.fit(adata, name, max_epochs=MAX_EPOCHS, seed=0, progress_bar=False, **SMALL)
    seconds[name] = time.perf_counter() - start
    pred = pf.tl.predict(model, controls, heldout, seed=0)
    baselines = ["additive"] if name == "mlp" else []  # the baseline once is enough
    table = pf.tl.evaluate(pred, adata, baselines=baselines, noise_ceiling=False)
    table.loc[table["model"] == "perturbflow", "model"] = f"perturbflow[{name}]"
    tables.append(table)
comparison = pd.concat(tables, ignore_index=True)
summary = comparison.groupby("model", sort=False)[["pearson_delta_top20", "mse_top20", "energy_distance"]].mean()
summary.assign(train_seconds=pd.Series({f"perturbflow[{k}]": v for k, v in seconds.items()}))
"""),
        code("""pf.pl.metrics(comparison, save=FIGURE_DIR / "04_backbones.png");"""),
        md("""
On small state-vector data like this, the backbones are close; the set and sequence backbones
pay off when cells of a set inform each other or when latents are large. Try them on your data
with the default training length before choosing.

## Register a new backbone

A backbone is an `nn.Module` built as `cls(n_latent=..., n_cond=..., **hyper)` and called as
`backbone(x_t=x_t, t=t, cond=cond)` with `x_t` of shape `(B, S, D)` (sets of `S` cells),
`t` of shape `(B,)` and `cond` of shape `(B, C)`; it returns `(B, S, D)`. Start its output at
zero so the untrained flow follows the baseline prior. Register it with the decorator
`register_backbone(name)`; the name must be new (a duplicate name is an error, so the cell
below checks first). A saved model with a custom backbone loads once the backbone is registered
again.
"""),
        code("""
import torch
from torch import nn

from perturbflow.backbones import register_backbone


class ConditionedLinear(nn.Module):
    \"\"\"A linear velocity whose slope and offset depend on the condition and time (a toy example).\"\"\"

    def __init__(self, n_latent: int, n_cond: int, d_model: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_cond + 1, d_model), nn.SiLU(), nn.Linear(d_model, 2 * n_latent))
        nn.init.zeros_(self.net[-1].weight)  # output starts at zero
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.net(torch.cat([cond, t.float().unsqueeze(-1)], dim=-1))  # (B, 2D)
        slope, offset = h.unsqueeze(1).chunk(2, dim=-1)  # (B, 1, D) each
        return slope * x_t + offset  # (B, S, D)


if "conditioned_linear" not in list_backbones():
    register_backbone("conditioned_linear")(ConditionedLinear)
list_backbones()
"""),
        code("""
model = pf.tl.fit(adata, "conditioned_linear", max_epochs=MAX_EPOCHS, seed=0, progress_bar=False, n_latent=10, flow_steps_per_epoch=20)
pred = pf.tl.predict(model, controls, heldout, seed=0)
pf.tl.evaluate(pred, adata, baselines=[], noise_ceiling=False)[["perturbation", "pearson_delta_top20", "mse_top20"]]
"""),
    ]


NOTEBOOKS = {
    "01_quickstart.ipynb": quickstart,
    "02_combinatorial_perturbations.ipynb": combinatorial,
    "03_context_transfer.ipynb": context_transfer,
    "04_choosing_a_backbone.ipynb": backbones,
}


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells(), metadata={"kernelspec": KERNEL, "language_info": {"name": "python"}})
        for i, cell in enumerate(nb.cells):  # stable ids keep diffs small
            cell["id"] = f"{name[:2]}-{i:02d}"
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    main()
