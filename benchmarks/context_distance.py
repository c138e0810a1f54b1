"""How far each held-out context's control cells lie from the measured ones, beside what the
flow's part in the new context gained there, per fold and seed of a ``quality.py`` CSV.

Usage (no training; reads the rows ``quality.py`` wrote)::

    python benchmarks/context_distance.py benchmarks/results/quality_session27_two_contexts.csv

``distance ratio``: the Euclidean distance between the held-out context's control latent mean
and the nearest measured context's, over the mean distance between the measured contexts'
means (the ``context_means`` column: each context's control latent mean in that run's VAE).
Below 1 the new context lies among the measured ones; above 1 it lies further from each of
them than they lie from each other. ``gain``: the default's top-20 Pearson and energy excess
against ``prior_only`` (the flow's part off), positive where the flow's part helped.

Why: on Norman's new replicates the flow's shape lowers the energy excess on rep2, is level on
rep3 and raises it on rep1 at every share (benchmarks/RESULTS.md, "Session 27"); this asks
whether how far the new context lies tells them apart.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import read_runs


def distance_ratio(means: dict[str, np.ndarray], held: str) -> float:
    """Distance from ``held``'s mean to the nearest other mean, over the mean pairwise distance
    between the other means (NaN with fewer than two others)."""
    measured = [c for c in means if c != held]
    if len(measured) < 2:
        return float("nan")
    nearest = min(np.linalg.norm(means[held] - means[c]) for c in measured)
    between = np.mean([np.linalg.norm(means[a] - means[b]) for a, b in itertools.combinations(measured, 2)])
    return float(nearest / between)


def fold_rows(table: pd.DataFrame, default: str = "perturbflow", off: str = "prior_only") -> pd.DataFrame:
    table = table.assign(energy_excess=table["energy_distance"] - table["energy_floor"])
    rows = []
    for (task, seed), run in table.groupby(["task", "seed"]):
        by_model = run.set_index("model")
        info = by_model.loc[default]
        means = {c: np.asarray(v) for c, v in json.loads(info["context_means"]).items()}
        held = [c for c in means if str(task).endswith(f"_{c}")]  # tasks are named <dataset>_<held context>
        if len(held) != 1:
            continue  # no held-out context (the Norman combinations)
        rows.append({
            "task": task, "seed": seed, "distance_ratio": distance_ratio(means, held[0]),
            "pearson_gain": by_model.loc[default, "pearson_delta_top20"] - by_model.loc[off, "pearson_delta_top20"],
            "energy_gain": by_model.loc[off, "energy_excess"] - by_model.loc[default, "energy_excess"],
            "energy_excess": by_model.loc[default, "energy_excess"],
            "mean_shift_energy_excess": by_model.loc["mean_shift", "energy_excess"],
        })
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    rows = fold_rows(read_runs(args.paths))  # a run in two files counted once
    rows = rows.sort_values(["task", "seed"])
    print(rows.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nper task (mean over seeds; ratio min-max):")
    per_task = rows.groupby("task").agg(
        ratio_min=("distance_ratio", "min"), ratio_max=("distance_ratio", "max"),
        pearson_gain=("pearson_gain", "mean"), energy_gain=("energy_gain", "mean"))
    print(per_task.to_string(float_format=lambda v: f"{v:.3f}"))
    for dataset, part in rows.groupby(rows["task"].str.rsplit("_", n=1).str[0]):
        if len(part) > 2 and part["energy_gain"].std() > 0:
            r = np.corrcoef(part["distance_ratio"], part["energy_gain"])[0, 1]
            print(f"{dataset}: correlation of distance ratio and energy gain over {len(part)} fold-runs {r:.2f}")


if __name__ == "__main__":
    main()
