"""The flow's part in a new context against each cell's own decoded change, per fold.

Usage (from the repository root, with ../shared/data beside it)::

    python benchmarks/flow_spread.py --tasks norman_replicates --seeds 0 1 2

Each (fold, seed) trains the default model once (as ``quality.py`` does) and scores, on the
same held-out real cells, its predictions with the flow's correction in the new context set
to each part (``new_context_flow``: ``off``, ``mean``, ``shape``, ``full``) and each cell's
own decoded change beyond its group's mean kept whole, halved or dropped (``cell_response``
1, 0.5, 0), each part applied whole or at the shares ``--fractions`` gives
(``new_context_fraction``). Rows are named ``<part>_r<cell_response>`` (whole) or
``<part>_f<share>_r<cell_response>``; ``shape_f0.5_r1`` is the default where fewer than five
contexts were measured (since session 27; ``off_r1`` before) and ``full_r1`` where more were. Each run
prints its rows' top-20 Pearson and energy; the CSV holds every metric of
:func:`perturbflow.metrics.summarize` per row (``report.py`` tabulates only ``quality.py``'s
row names).

Why: the flow's whole move in a new replicate gives the best top-20 Pearson of any row of
the protocol (0.591 against the mean shift's 0.532) at an energy cost (0.716 against 0.178,
``quality_session25.csv``). Its group means are better; the question is whether the cost is
the cells' spread around them, which ``cell_response`` takes away.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import score
from tasks import DEFAULT_DATA_DIR, FOLDS, RESULTS_DIR, fold_task, parse_config, run_units

import perturbflow as pf
from perturbflow.metrics import summarize

PARTS = ("off", "mean", "shape", "full")
CELL_RESPONSES = (1.0, 0.5, 0.0)


def run_unit(unit: tuple, data_dir: Path, config: dict, threads: int, parts=PARTS,
             responses=CELL_RESPONSES, fractions=(1.0,)) -> pd.DataFrame:
    name, fold, seed = unit
    torch.set_num_threads(threads)
    task = fold_task(name, fold, data_dir)
    task.setup_model()
    start = time.perf_counter()
    model = pf.PerturbFlow(task.adata, **config)
    model.train(seed=seed, progress_bar=False)
    train_s = time.perf_counter() - start
    controls = task.controls()
    tables = []
    for part in parts:
        model.config.new_context_flow = part
        for fraction in (fractions if part != "off" else (1.0,)):
            model.config.new_context_fraction = fraction
            for response in responses:
                model.config.cell_response = response
                pred = model.predict(controls, task.perturbations, seed=seed)
                applied = part if fraction == 1 else f"{part}_f{fraction:g}"
                tables.append(score(pred, task, seed, f"{applied}_r{response:g}"))
    summary = summarize(pd.concat(tables, ignore_index=True)).reset_index()
    for col, value in (("seed", seed), ("backbone", model.config.backbone), ("task", task.name), ("dataset", name)):
        summary.insert(0, col, value)
    summary["train_s"] = train_s
    print(f"== {task.name} seed {seed}: train {train_s:.0f} s", flush=True)
    print(summary[["model", "pearson_delta_top20", "energy_distance", "energy_floor"]].to_string(index=False), flush=True)
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["norman_replicates"], choices=list(FOLDS))
    parser.add_argument("--folds", nargs="+", default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "flow_spread.csv")
    parser.add_argument("--config", nargs="*", default=[], help="PerturbFlowConfig overrides, KEY=VALUE")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--responses", nargs="+", type=float, default=list(CELL_RESPONSES))
    parser.add_argument("--fractions", nargs="+", type=float, default=[1.0],
                        help="shares of each part applied (new_context_fraction); rows <part>_f<share>_r<response>")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    units = [(name, fold, seed) for seed in args.seeds for name in args.tasks
             for fold in FOLDS[name] if not args.folds or fold in args.folds]
    run = partial(run_unit, data_dir=args.data_dir, config=parse_config(args.config),
                  threads=max(1, args.threads // args.jobs), parts=args.parts, responses=args.responses,
                  fractions=args.fractions)
    run_units(run, units, args.out, args.jobs)


if __name__ == "__main__":
    main()
