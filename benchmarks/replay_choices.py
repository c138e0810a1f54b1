"""Replay the two choices the model makes for a new context on the scores that earlier
quality runs recorded, against what those runs chose: the flow's part
(``new_context_flow="auto"``) and the decoding (``exact_mean="auto"``).

Usage (from the repository root)::

    python benchmarks/replay_choices.py benchmarks/results/quality_zeroing.csv \\
        benchmarks/results/quality_exact_mean.csv --margins 0 0.05 0.1 0.2 0.3

Each quality run records its probe's scores (``new_context_scores``: latent and decoded
energy distances of each part to the held-out context's real cells) and scores, from the
same trained model, the prediction with the flow off (``prior_only``) and with each part
applied in the new context (``flow_mean``, ``flow_shape``, ``flow_full``). The latent scores
do not depend on the decoding, so the choice of :func:`perturbflow.train.best_parts` can be
replayed exactly on any run: its outcome is the row of the part it chooses. Printed: per
fold and seed, the recorded choice and the replayed ones, then the mean top-20 Pearson delta
/ energy excess over the floor of every rule over all the runs.

The distance rule (runs that recorded ``context_means``): the flow's whole correction where
the new context's control latent mean is no farther from its nearest measured context than
the median measured context is from its own nearest measured neighbour, off elsewhere; no
probe is needed. (Its outcome is the run's ``flow_full`` or ``prior_only`` row.)

The decoding: each run with ``decoding_scores`` (every measured context predicted from the
others, decoded exact and clipped) is replayed with :func:`perturbflow.train.choose_decoding`
over all of them; its outcome is the run's ``exact_zeroing`` or ``mean_clipped`` row. Those
rows carry the run's own choice of the flow's part, so where that part was applied the
replay is of the decoding alone. Runs that scored a share of clipping's lift put back
(rows ``exact_half``, ``exact_fitted`` in session 16's run, ``decoding_chosen`` after it, when the
fitted share became the default) are averaged beside them.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

from perturbflow.train import MIN_CONTEXTS, MIN_GAIN, best_parts, choose_decoding

PART_ROWS = {"off": "prior_only", "mean": "flow_mean", "shape": "flow_shape", "full": "flow_full"}


def runs(paths: list[str]) -> list[dict]:
    """One entry per (file, task, seed) whose probe recorded latent scores, with the
    Pearson / energy excess of each row that a choice can lead to."""
    found = []
    for path in paths:
        df = pd.read_csv(path)
        if not {"new_context_scores", "energy_floor"} <= set(df.columns):
            continue  # a run from before the probe or the floor was recorded
        df["energy_excess"] = df["energy_distance"] - df["energy_floor"]
        for (task, seed), part in df.groupby(["task", "seed"], sort=False):
            by = part.set_index("model")
            if "perturbflow" not in by.index or not all(m in by.index for m in PART_ROWS.values()):
                continue
            recorded = by.loc["perturbflow"].get("new_context_scores")
            scores = json.loads(recorded) if isinstance(recorded, str) else {}
            if not scores or any("latent" not in s for s in scores.values()):
                continue
            means = by.loc["perturbflow"].get("context_means")
            found.append({
                "file": path.rsplit("/", 1)[-1], "task": task, "seed": int(seed), "scores": scores,
                "near": near_choice(json.loads(means), task.split("_", 1)[1]) if isinstance(means, str) else None,
                "recorded": by.loc["perturbflow", "new_context_part"],
                "rows": {m: (by.loc[m, "pearson_delta_top20"], by.loc[m, "energy_excess"])
                         for m in ["perturbflow", *PART_ROWS.values()]},
            })
    return found


def near_measured(new_mean: np.ndarray, measured_means: dict[str, np.ndarray]) -> bool:
    """Whether a new context lies among the measured ones: its control latent mean is no
    farther from the nearest measured context's than the median measured context is from
    its own nearest measured neighbour (``False`` with fewer than ``MIN_CONTEXTS``)."""
    if len(measured_means) < MIN_CONTEXTS:
        return False
    names = sorted(measured_means)

    def nearest(mean: np.ndarray, exclude: str | None = None) -> float:
        return min(float(np.linalg.norm(mean - measured_means[c])) for c in names if c != exclude)

    return nearest(new_mean) <= float(np.median([nearest(measured_means[c], exclude=c) for c in names]))


def near_choice(context_means: dict[str, list[float]], new: str) -> str:
    """The distance rule (tried in session 21, not kept): the flow's whole correction
    ("full") if the fold's held-out context ``new`` lies among the others (all measured),
    "off" if not."""
    means = {c: np.asarray(v) for c, v in context_means.items()}
    return "full" if near_measured(means[new], {c: m for c, m in means.items() if c != new}) else "off"


def decoding_replay(paths: list[str]) -> None:
    """The decoding chosen over every measured context, against each run's own choice."""
    lines, totals = [], {"recorded": [], "replayed": [], "always exact": [], "always clipped": []}
    shares = {"exact_half": "half the lift put back", "exact_fitted": "the fitted share (session 16's run)",
              "decoding_chosen": "exact or clipped by the scores (sessions 13-15)"}
    for path in paths:
        df = pd.read_csv(path)
        if not {"decoding_scores", "energy_floor"} <= set(df.columns):
            continue
        df["energy_excess"] = df["energy_distance"] - df["energy_floor"]
        for (task, seed), part in df.groupby(["task", "seed"], sort=False):
            by = part.set_index("model")
            recorded = by.loc["perturbflow"].get("decoding_scores") if "perturbflow" in by.index else None
            scores = json.loads(recorded) if isinstance(recorded, str) else {}
            if not scores or not {"exact_zeroing", "mean_clipped"} <= set(by.index):
                continue
            rows = {m: (by.loc[m, "pearson_delta_top20"], by.loc[m, "energy_excess"])
                    for m in ("perturbflow", "exact_zeroing", "mean_clipped")}
            choice = choose_decoding(scores, list(scores))
            replayed = rows["exact_zeroing" if choice == "exact" else "mean_clipped"]
            for name, value in zip(totals, (rows["perturbflow"], replayed, rows["exact_zeroing"], rows["mean_clipped"])):
                totals[name].append(value)
            for row, name in shares.items():  # rows of runs that scored a share of the lift
                if row in by.index:
                    totals.setdefault(name, []).append((by.loc[row, "pearson_delta_top20"], by.loc[row, "energy_excess"]))
            applied = by.loc["perturbflow"].get("exact_mean_applied")
            lines.append(f"| {path.rsplit('/', 1)[-1]} | {task} | {seed} | {rows['exact_zeroing'][1]:.3f} | "
                         f"{rows['mean_clipped'][1]:.3f} | {applied} {rows['perturbflow'][1]:.3f} | "
                         f"{choice} {replayed[1]:.3f} |")
    if not lines:
        return
    print("\nThe decoding: energy excess exact (zeroing) / clipped, the run's choice (exact?) and the replayed one\n")
    print("| file | fold | seed | exact | clipped | recorded | replayed |\n|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print(f"\n{len(lines)} runs; mean top-20 Pearson delta / energy excess over the floor:\n")
    for name, values in totals.items():
        values = np.array(values, dtype=float)
        print(f"- {name}: {values[:, 0].mean():.3f} / {values[:, 1].mean():.3f}"
              + ("" if len(values) == len(lines) else f" ({len(values)} runs)"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="quality CSVs (benchmarks/quality.py)")
    parser.add_argument("--margins", nargs="+", type=float, default=[MIN_GAIN], help="min_gain values to replay")
    args = parser.parse_args(argv)
    found = runs(args.paths)
    if not found:
        print("no run with recorded latent probe scores and every part's row in these files")
        decoding_replay(args.paths)
        return
    totals = {"recorded": [], "always off": [], "always mean": [], "always full": []}
    lines = []
    near = any(run["near"] is not None for run in found)  # runs that recorded each context's latent mean
    for run in found:
        rows = run["rows"]
        totals["recorded"].append(rows["perturbflow"])
        totals["always off"].append(rows["prior_only"])
        totals["always mean"].append(rows["flow_mean"])
        totals["always full"].append(rows["flow_full"])
        line = (f"| {run['file']} | {run['task']} | {run['seed']} | {rows['prior_only'][1]:.3f} | "
                f"{rows['flow_mean'][1]:.3f} | {run['recorded']} {rows['perturbflow'][1]:.3f} |")
        if run["near"] is not None:
            outcome = rows[PART_ROWS[run["near"]]]
            totals.setdefault("distance rule", []).append(outcome)
            line += f" {run['near']} {outcome[1]:.3f} |"
        elif near:
            line += " – |"
        for margin in args.margins:
            choice = next(iter(best_parts(run["scores"], min_gain=margin).values()))
            outcome = rows[PART_ROWS[choice]]
            totals.setdefault(f"latent, margin {margin:g}", []).append(outcome)
            line += f" {choice} {outcome[1]:.3f} |"
        lines.append(line)
    print("The flow's part: energy excess with it off / its mean applied, the run's choice and the replayed ones\n")
    print("| file | fold | seed | off | mean | recorded | " + ("distance rule | " if near else "")
          + " | ".join(f"margin {m:g}" for m in args.margins) + " |")
    print("|---" * (6 + near + len(args.margins)) + "|")
    print("\n".join(lines))
    print(f"\n{len(found)} runs; mean top-20 Pearson delta / energy excess over the floor:\n")
    for name, values in totals.items():
        values = np.array(values, dtype=float)
        print(f"- {name}: {values[:, 0].mean():.3f} / {values[:, 1].mean():.3f}")
    decoding_replay(args.paths)


if __name__ == "__main__":
    main()
