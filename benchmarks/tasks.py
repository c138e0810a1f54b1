"""The real-data tasks shared by the benchmark scripts: which cells are held out, and how."""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
NORMAN_HELDOUT = ["KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+SLC38A2", "MAP2K3+MAP2K6", "MAPK1+TGFBR2"]
# Norman's eight 10x lanes (the barcodes' suffix) grouped into three replicates of the screen
NORMAN_REPLICATES = {"rep1": ("1", "2", "3"), "rep2": ("4", "5", "6"), "rep3": ("7", "8")}


@dataclass
class Task:
    """A held-out prediction task on one real file."""

    name: str
    description: str
    adata: ad.AnnData  # counts in layers['counts'], obs['split'] in train/test
    perturbation_key: str
    control_value: str
    context_keys: list[str]
    perturbations: list[str]  # labels to predict
    predict_contexts: list[str]  # contexts whose control cells are moved
    baseline: str  # the baseline the task is about

    def setup_model(self) -> None:
        """Register the task's file with perturbflow (counts layer, keys and split)."""
        import perturbflow as pf

        pf.PerturbFlow.setup_anndata(
            self.adata, perturbation_key=self.perturbation_key, control_value=self.control_value,
            layer="counts", context_keys=self.context_keys or None, split_key="split",
        )

    def controls(self) -> ad.AnnData:
        obs = self.adata.obs
        mask = obs[self.perturbation_key].astype(str) == self.control_value
        if self.context_keys:
            mask &= obs[self.context_keys[0]].astype(str).isin(self.predict_contexts)
        return self.adata[mask.to_numpy()].copy()


def _exact(adata: ad.AnnData) -> ad.AnnData:
    if "counts_recovered_exact" in adata.obs:
        adata = adata[adata.obs["counts_recovered_exact"].astype(bool).to_numpy()]
    return adata.copy()


def _devel_study(data_dir: Path, dataset: str) -> ad.AnnData:
    """The cells of one study (``obs['dataset']``) of PerturBench's development file, those
    whose counts were recovered exactly."""
    adata = ad.read_h5ad(data_dir / "perturbench_devel_norman2019_mcfaline2023.h5ad")
    return _exact(adata[adata.obs["dataset"] == dataset])


def norman_combinations(data_dir: Path = DEFAULT_DATA_DIR) -> Task:
    adata = _devel_study(data_dir, "norman19")
    adata.obs["split"] = np.where(adata.obs["perturbation"].isin(NORMAN_HELDOUT), "test", "train")
    return Task(
        "norman_combinations",
        "Norman 2019 K562 CRISPRa: 5 two-gene combinations held out (both singles seen)",
        adata, "perturbation", "control", [], NORMAN_HELDOUT, [], "additive",
    )


def norman_new_replicate(data_dir: Path = DEFAULT_DATA_DIR, held: str = "rep1") -> Task:
    """Every perturbation measured in a replicate the model has seen only the control cells of.

    The kind of task where the same screen is run again (a new replicate, donor or batch): the
    effects are those of the other replicates, up to the batch. Norman's lanes stand in for
    replicates (``NORMAN_REPLICATES``: about 35 cells per perturbation and replicate)."""
    adata = _devel_study(data_dir, "norman19")
    replicate_of = {lane: rep for rep, lanes in NORMAN_REPLICATES.items() for lane in lanes}
    adata.obs["replicate"] = [replicate_of[name.rsplit("-", 1)[-1]] for name in adata.obs_names]
    return _context_held_out(adata, "replicate", held, f"norman_{held}", "Norman 2019 K562 CRISPRa")


def mcfaline_new_cell_line(data_dir: Path = DEFAULT_DATA_DIR, held: str = "U87MG") -> Task:
    adata = _devel_study(data_dir, "mcfaline23")
    return _context_held_out(adata, "cell_type", held, f"mcfaline_{held}", "McFaline-Figueroa CRISPRi")


def _context_held_out(adata: ad.AnnData, key: str, held: str, name: str, study: str) -> Task:
    """Every perturbed cell of context ``held`` (column ``key``) held out; its control cells
    are the ones moved."""
    held_out = (adata.obs[key] == held) & (adata.obs["perturbation"] != "control")
    adata.obs["split"] = np.where(held_out, "test", "train")
    perts = sorted(adata.obs.loc[held_out, "perturbation"].astype(str).unique())
    return Task(
        name, f"{study}: every perturbed cell of {key} {held} held out (context {key})",
        adata, "perturbation", "control", [key], perts, [held], "mean_shift",
    )


def kang_new_cell_type(data_dir: Path = DEFAULT_DATA_DIR, held: str = "CD14+Mono") -> Task:
    adata = _exact(ad.read_h5ad(data_dir / "kang2018_ifnb_pbmc_scgen_valid.h5ad"))
    held_out = (adata.obs["cell_type"] == held) & (adata.obs["condition"] == "stimulated")
    adata.obs["split"] = np.where(held_out, "test", "train")
    return Task(
        f"kang_{held}",
        f"Kang 2018 PBMC IFN-beta: stimulated {held} cells held out (context cell_type)",
        adata, "condition", "control", ["cell_type"], ["stimulated"], [held], "mean_shift",
    )


TASKS = {
    "norman": norman_combinations,
    "norman_replicates": norman_new_replicate,
    "mcfaline": mcfaline_new_cell_line,
    "kang": kang_new_cell_type,
}

# every fold each dataset allows (leave one context out); the first is the one --quick runs.
# Longest to train first, so that runs side by side end together (a Kang fold trains ~4x
# longer than the others)
FOLDS = {
    "kang": ["CD14+Mono", "CD4T", "FCGR3A+Mono", "B", "NK", "CD8T", "Dendritic"],
    "mcfaline": ["U87MG", "A172", "T98G"],
    "norman_replicates": list(NORMAN_REPLICATES),
    "norman": [None],
}


def fold_task(name: str, fold: str | None, data_dir: Path = DEFAULT_DATA_DIR) -> Task:
    """The task of dataset ``name`` with context ``fold`` held out (``None``: its only split)."""
    return TASKS[name](data_dir) if fold is None else TASKS[name](data_dir, held=fold)


def parse_config(pairs: list[str]) -> dict:
    """``KEY=VALUE`` overrides of PerturbFlowConfig, each value of the field's type (a dict
    field as JSON, e.g. ``backbone_kwargs={"d_model":128}``)."""
    import perturbflow as pf

    defaults = pf.PerturbFlowConfig()
    config = {}
    for key, value in (kv.split("=", 1) for kv in pairs):
        kind = type(getattr(defaults, key))
        config[key] = value == "True" if kind is bool else json.loads(value) if kind is dict else kind(value)
    return config


def save_results(table, path: Path) -> None:
    """Write a results table as CSV, each row carrying the command that made it."""
    table.insert(0, "command", " ".join(["python", *sys.argv]))
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    print(f"\nwrote {path}")


def run_units(run, units: list, out: Path, jobs: int) -> None:
    """``run(unit)`` (a table of rows) for every unit of ``units``: ``jobs`` side by side in
    spawned processes, or one after another here with ``jobs=1``. The rows gathered so far
    are written to ``out`` after each unit, so partial results survive a stop; the wall time
    is printed at the end."""
    import pandas as pd

    rows = []
    start = time.perf_counter()
    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for summary in pool.map(run, units):
                rows.append(summary)
                save_results(pd.concat(rows, ignore_index=True), out)
    else:
        for unit in units:
            rows.append(run(unit))
            save_results(pd.concat(rows, ignore_index=True), out)
    print(f"{len(units)} runs in {(time.perf_counter() - start) / 60:.1f} min")
