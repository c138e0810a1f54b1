"""The benchmark tables' own arithmetic: runs found in two files counted once, and the
distance ratio of a held-out context."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from context_distance import distance_ratio
from report import read_runs


def _run(seed: int, energy: float, command: str) -> dict:
    return {"command": command, "dataset": "mcfaline", "task": "mcfaline_U87MG", "backbone": "dit",
            "seed": seed, "model": "perturbflow", "energy_distance": energy}


def test_a_run_in_two_files_counts_once_from_the_later_file(tmp_path):
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    pd.DataFrame([_run(0, 1.0, "a"), _run(1, 2.0, "a")]).to_csv(first, index=False)
    pd.DataFrame([_run(1, 2.0, "b"), _run(2, 4.0, "b")]).to_csv(second, index=False)
    table = read_runs([first, second])
    assert sorted(table["seed"]) == [0, 1, 2]
    assert table.loc[table["seed"] == 1, "command"].item() == "b"
    assert table["energy_distance"].mean() == pytest.approx(7.0 / 3)


def test_distance_ratio_against_the_measured_contexts_spacing():
    means = {"a": np.array([0.0, 0.0]), "b": np.array([2.0, 0.0]), "new": np.array([1.0, 3.0])}
    # nearest measured mean at sqrt(10), the two measured means 2 apart
    assert distance_ratio(means, "new") == pytest.approx(np.sqrt(10) / 2)
    means["c"] = np.array([0.0, 4.0])  # pairwise distances 2, 4 and sqrt(20); nearest to "new" is c, sqrt(2)
    assert distance_ratio(means, "new") == pytest.approx(np.sqrt(2) / np.mean([2.0, 4.0, np.sqrt(20)]))


def test_distance_ratio_needs_two_measured_contexts():
    assert np.isnan(distance_ratio({"a": np.zeros(2), "new": np.ones(2)}, "new"))
