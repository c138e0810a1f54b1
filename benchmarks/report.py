"""Turn the CSVs in benchmarks/results/ into the markdown tables of RESULTS.md.

Usage::

    python benchmarks/report.py results/quality.csv             # per-task tables, markdown
    python benchmarks/report.py results/backbones.csv --summary # one row per task and backbone
    python benchmarks/report.py results/quality.csv --folds     # mean and spread over seeds, per fold
    python benchmarks/report.py A.csv B.csv --folds            # the runs of several files together
    python benchmarks/report.py results/backbones_folds.csv --rank  # the backbones ranked on the folds
    python benchmarks/report.py A.csv B.csv --rank  # on the folds and seeds every backbone ran
"""

from __future__ import annotations

import sys

import pandas as pd

COLUMNS = ["pearson_delta", "pearson_delta_top20", "mse_top20", "energy_distance", "energy_floor", "mmd",
           "discrimination_l1", "de_overlap", "nb_loglik"]
BASELINES = ["control", "train_mean", "context_mean", "mean_shift", "additive", "additive_exact", "linear"]
# rows of the per-fold tables: the model, its ablations, the baselines a user would compare with
FOLD_MODELS = ["perturbflow", "perturbflow_X", "residual_whole", "prior_only", "flow_full", "flow_mean", "flow_only", "gene_space_prior",
               "prior_mean", "mean_clipped", "exact_mean", "exact_zeroing", "exact_thinning", "exact_shift",
               "exact_half", "exact_fitted", "decoding_chosen",
               "latent_shift", "latent_shift_X", "decoded_control_X", "train_mean", "mean_shift", "additive", "additive_exact", "linear", "noise_ceiling"]
RANKED = ["flow_full", "flow_mean", "perturbflow", "prior_only"]  # the rows of the backbone ranking
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
            extra = ""
            if "correction_scale" in part:
                applied = ""
                if "applied_correction_scale" in part:
                    applied = f" (applied in the held-out context: {model['applied_correction_scale']:.2f})"
                extra = (f", flow correction calibrated {model['correction_scale']:.2f}{applied}, context "
                         f"transfer bandwidth {model['transfer_bandwidth']} / specificity "
                         f"{model['transfer_specificity']}")
            print(f"train {model['train_s']:.0f} s, predict {model['cells_per_s']:.0f} cells/s, "
                  f"velocity network {int(model['backbone_params']):,} parameters{extra}\n")
        print(to_markdown(part[["model", "n_groups", *[c for c in COLUMNS if c in part]]]) + "\n")


def summary(path: str) -> None:
    """One row per (task, backbone): cost, and the headline metrics beside the baselines."""
    df = pd.read_csv(path)
    print(f"Command: `{df['command'].iloc[0]}`\n")
    rows = []
    for (task, backbone), part in df.groupby(["task", "backbone"], sort=False):
        by = part.set_index("model")
        base = by.loc[[b for b in BASELINES if b in by.index and b != "control"]]
        best = base["pearson_delta_top20"].idxmax()
        m = by.loc["perturbflow"]
        rows.append({
            "task": task, "backbone": backbone, "params": f"{int(m['backbone_params']):,}",
            "train_s": f"{m['train_s']:.0f}", "predict_cells_per_s": f"{m['cells_per_s']:.0f}",
            "pearson_top20": f"{m['pearson_delta_top20']:.3f}",
            "train_mean_top20": f"{by.loc['train_mean', 'pearson_delta_top20']:.3f}",
            "best_baseline_top20": f"{best} {base.loc[best, 'pearson_delta_top20']:.3f}",
            "energy": f"{m['energy_distance']:.3f}",
            "best_baseline_energy": f"{base['energy_distance'].min():.3f}",
        })
    print(to_markdown(pd.DataFrame(rows)))


def _mean_sd(values: pd.Series) -> str:
    if values.isna().all():
        return ""
    return f"{values.mean():.3f}" + (f" ± {values.std(ddof=1):.3f}" if values.notna().sum() > 1 else "")


def read_runs(paths) -> pd.DataFrame:
    """The rows of every file of ``paths``; a run (dataset, fold, backbone, seed) found in more
    than one file is counted once, from the last file that has it (a run repeated in a later
    file, e.g. one that an earlier, stopped file had reached, would otherwise weigh twice)."""
    df = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    keys = [k for k in ("dataset", "task", "backbone", "seed", "model") if k in df.columns]
    return df.drop_duplicates(subset=keys, keep="last").reset_index(drop=True)


def folds(*paths: str) -> None:
    """Per fold and per dataset: top-20 Pearson delta and the energy's excess over its floor,
    mean ± standard deviation over seeds (the "mean of folds" column averages the folds of each
    seed that has them all, then the seeds), over the runs of every file of ``paths``."""
    df = read_runs(paths)
    df = df[df["model"].isin(FOLD_MODELS)].copy()
    df["energy_excess"] = df["energy_distance"] - df["energy_floor"]
    for command in dict.fromkeys(df["command"]):
        print(f"Command: `{command}`\n")
    for dataset, part in df.groupby("dataset", sort=False):
        seeds = sorted(int(s) for s in part["seed"].unique())
        print(f"### {dataset}: top-20 Pearson delta / energy excess over the floor, seeds {seeds}\n")
        tasks = list(dict.fromkeys(part["task"]))
        complete = [s for s in seeds if part.loc[part["seed"] == s, "task"].nunique() == len(set(part["task"]))]
        by_seed = part[part["seed"].isin(complete)].groupby(["model", "seed"])[["pearson_delta_top20", "energy_excess"]].mean()
        rows = []
        for model in [m for m in FOLD_MODELS if m in set(part["model"])]:
            row = {"model": model}
            for task in tasks:
                cell = part[(part["task"] == task) & (part["model"] == model)]
                row[task.split("_", 1)[-1]] = f"{_mean_sd(cell['pearson_delta_top20'])} / {_mean_sd(cell['energy_excess'])}"
            if len(tasks) > 1 and complete:
                mine = by_seed.loc[model]
                row["mean of folds"] = f"{_mean_sd(mine['pearson_delta_top20'])} / {_mean_sd(mine['energy_excess'])}"
            rows.append(row)
        print(to_markdown(pd.DataFrame(rows)) + "\n")
        timing = part[part["model"] == "perturbflow"]
        applied = (timing["applied_correction_scale"] > 0).sum()
        print(f"train {timing['train_s'].mean():.0f} s on average ({timing['train_s'].min():.0f}–"
              f"{timing['train_s'].max():.0f}); the flow's correction was applied in {applied} of "
              f"{len(timing)} runs (calibrated scales: {sorted(float(v) for v in timing['correction_scale'].unique())})"
              + _exact_mean_counts(timing) + "\n")


def rank(*paths: str) -> None:
    """The backbones ranked on the folds of each dataset by their flow's own transport
    (``flow_full``: the whole correction applied in every context; ``flow_mean``: its mean
    move in a new context), each with the default prediction, the prior alone (the same for every backbone: what the flow is measured
    against), training time and size. Cells: mean over folds (and seeds) of top-20 Pearson
    delta / energy excess over the floor; the rank is by the default prediction's energy
    excess (``flow_full``'s until session 27, when the default came to apply the flow in
    every new context: on Kang the two are one prediction). Only the (fold, seed) runs that
    every backbone has are counted."""
    df = read_runs(paths)
    df["energy_excess"] = df["energy_distance"] - df["energy_floor"]
    for command in dict.fromkeys(df["command"]):
        print(f"Command: `{command}`\n")

    def cell(part: pd.DataFrame, model: str) -> tuple[float, float]:
        rows = part[part["model"] == model]
        return rows["pearson_delta_top20"].mean(), rows["energy_excess"].mean()

    for dataset, part in df.groupby("dataset", sort=False):
        runs = part[part["model"] == "perturbflow"].groupby("backbone")[["task", "seed"]]
        shared = set.intersection(*(set(map(tuple, r.values)) for _, r in runs))  # (fold, seed) of every backbone
        part = part[[(t, s) in shared for t, s in zip(part["task"], part["seed"])]]
        n_folds, seeds = part["task"].nunique(), sorted(int(s) for s in part["seed"].unique())
        print(f"### {dataset}: {n_folds} fold(s), seeds {seeds} that every backbone ran, mean over them\n")
        rows = []
        for backbone, mine in part.groupby("backbone", sort=False):
            timing = mine[mine["model"] == "perturbflow"]
            rows.append({"backbone": backbone, **{m: cell(mine, m) for m in RANKED},
                         "train_s": timing["train_s"].mean(), "params": int(timing["backbone_params"].iloc[0])})
        rows.sort(key=lambda r: (r["perturbflow"][1], -r["perturbflow"][0]))
        table = pd.DataFrame([{
            "rank": i + 1, "backbone": r["backbone"],
            **{m: f"{r[m][0]:.3f} / {r[m][1]:.3f}" for m in RANKED},
            "train_s": f"{r['train_s']:.0f}", "params": f"{r['params']:,}",
        } for i, r in enumerate(rows)])
        print(to_markdown(table) + "\n")


def _exact_mean_counts(timing: pd.DataFrame) -> str:
    """How often the held-out context's group means were kept exact (``exact_mean="auto"``),
    or, since session 16, the range of the share of clipping's lift put back."""
    if "exact_mean_applied" not in timing:
        return ""
    applied = timing["exact_mean_applied"].dropna().astype(str)
    shares = pd.to_numeric(applied, errors="coerce").dropna()
    if len(shares):
        return f"; share of clipping's lift put back {shares.min():.2f}-{shares.max():.2f} over {len(shares)} runs"
    return f"; group means kept exact in {(applied == 'True').sum()} of {len(applied)} runs"


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
    elif "--rank" in sys.argv:
        rank(*(a for a in sys.argv[1:] if not a.startswith("--")))
    elif "--folds" in sys.argv:
        folds(*(a for a in sys.argv[1:] if not a.startswith("--")))
    elif "--summary" in sys.argv:
        summary(sys.argv[1])
    else:
        main(sys.argv[1])
