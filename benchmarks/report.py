"""Turn the CSVs in benchmarks/results/ into the markdown tables of RESULTS.md.

Usage::

    python benchmarks/report.py results/quality.csv   # prints markdown
"""

from __future__ import annotations

import sys

import pandas as pd

COLUMNS = ["pearson_delta", "pearson_delta_top20", "mse_top20", "energy_distance", "mmd",
           "discrimination_l1", "de_overlap"]
TIMING = ["train_s", "predict_s", "cells_per_s", "backbone_params"]


def to_markdown(table: pd.DataFrame) -> str:
    cols = [c for c in table.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in table.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            cells.append(f"{v:.3f}" if isinstance(v, float) and c not in TIMING else
                         (f"{v:.0f}" if isinstance(v, float) and pd.notna(v) else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(path: str) -> None:
    df = pd.read_csv(path)
    print(f"Command: `{df['command'].iloc[0]}`\n" if "command" in df else "")
    for (task, backbone), part in df.groupby(["task", "backbone"], sort=False):
        model = part[part["model"] == "perturbflow"].iloc[0]
        print(f"### {task} — backbone `{backbone}`\n")
        if "train_s" in part:
            print(f"train {model['train_s']:.0f} s, predict {model['cells_per_s']:.0f} cells/s, "
                  f"velocity network {int(model['backbone_params']):,} parameters\n")
        print(to_markdown(part[["model", "n_groups", *[c for c in COLUMNS if c in part]]]) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
