"""How much of the flow's correction helps on held-out cells: one model, every correction scale.

Trains the default model once per seed, then predicts the held-out groups with the flow's
correction forced to each scale (also in contexts new to the flow, where the default uses
none) and scores the expected counts beside the training mean. The calibrated choice is
printed too. A diagnostic for RESULTS.md, not a way to pick the scale (that would tune on the
test cells).

Usage (from the repository root)::

    python benchmarks/correction_sweep.py --tasks mcfaline --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts
from tasks import DEFAULT_DATA_DIR, RESULTS_DIR, TASKS, save_results

import perturbflow as pf
from perturbflow.metrics import summarize
from perturbflow.train import CORRECTION_SCALES


def sweep(task, seed: int) -> pd.DataFrame:
    adata = task.adata
    task.setup_model()
    model = pf.PerturbFlow(adata)
    model.train(seed=seed, progress_bar=False)
    chosen, fitted = model.correction_scale, model.flow_contexts
    model.flow_contexts = list(model.context_stats)  # force the scale in every context
    rows = []
    for scale in CORRECTION_SCALES:
        model.correction_scale = scale
        pred = model.predict(task.controls(), perturbations=task.perturbations, seed=seed)
        table = pf.tl.evaluate(pred, adata, real_layer="counts", baselines=["train_mean"] if scale == 0 else [],
                               noise_ceiling=False, seed=seed, copy=True)
        summary = summarize(table).reset_index()
        summary["scale"] = scale
        rows.append(summary)
    out = pd.concat(rows, ignore_index=True)
    out.insert(0, "seed", seed)
    out.insert(0, "task", task.name)
    out["calibrated_scale"] = chosen
    out["flow_contexts"] = " ".join(fitted)  # contexts with perturbed cells in the flow's fit
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["norman", "mcfaline", "kang"], choices=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path,
                        default=RESULTS_DIR / "correction_sweep.csv")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tables = []
    for name in args.tasks:
        task = TASKS[name](args.data_dir)
        for seed in args.seeds:
            table = sweep(task, seed)
            tables.append(table)
            show = table[["seed", "model", "scale", "pearson_delta_top20", "energy_distance", "calibrated_scale"]]
            print(f"\n== {task.name}, seed {seed}")
            print(show.to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
    out = pd.concat(tables, ignore_index=True)
    save_results(out, args.out)


if __name__ == "__main__":
    main()
