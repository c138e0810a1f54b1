"""Training from disk at scale: wall time and peak memory of ``perturbflow train`` by data size.

Usage (from the repository root)::

    python benchmarks/scale.py --sizes 100000 300000 1000000 --data-dir SCRATCH_DIR
    python benchmarks/scale.py --sizes 100000 --in-memory      # the whole-file path, to compare

For each size, synthetic raw counts (2,000 genes, sparse CSR) are written to
``DATA_DIR/cells_N.h5ad`` in row chunks through anndata's on-disk sparse dataset (its
``append``), so writing them never holds the matrix in memory; a file already there is reused.
Then ``perturbflow train`` runs in its own process under ``/usr/bin/time -v`` (1 epoch of each
stage), and its wall time and peak resident memory go to ``benchmarks/results/scale.csv``
with the command that was run.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

RESULTS = Path(__file__).resolve().parent / "results" / "scale.csv"
N_GENES = 2000
N_PERTURBATIONS = 200
N_CONTEXTS = 2
CONTROL_FRACTION = 0.1
WRITE_CHUNK = 20_000


def write_synthetic(path: Path, n_cells: int, n_genes: int = N_GENES, seed: int = 0) -> None:
    """Write a Perturb-seq-like AnnData of NB counts to ``path`` in chunks of rows.

    Each of ``N_PERTURBATIONS`` single-gene perturbations moves 20 genes by about one unit of
    log expression, scaled per context; a tenth of the cells are controls. Only one chunk of
    rows is in memory at a time.
    """
    import anndata as ad
    import h5py
    from anndata.io import sparse_dataset, write_elem

    rng = np.random.default_rng(seed)
    base = np.sort(rng.normal(0.0, 1.5, size=n_genes))[::-1] + rng.normal(0.0, 0.3, size=(N_CONTEXTS, n_genes))
    effects = np.zeros((N_PERTURBATIONS + 1, n_genes))
    for p in range(1, N_PERTURBATIONS + 1):
        idx = rng.choice(n_genes, 20, replace=False)
        effects[p, idx] = rng.choice([-1.0, 1.0], 20) * rng.uniform(0.5, 1.5, 20)
    labels = np.array(["control"] + [f"P{p}" for p in range(N_PERTURBATIONS)])
    pert = np.where(rng.random(n_cells) < CONTROL_FRACTION, 0, rng.integers(1, N_PERTURBATIONS + 1, n_cells))
    context = rng.integers(0, N_CONTEXTS, n_cells)
    obs = pd.DataFrame(
        {"perturbation": pd.Categorical(labels[pert]), "cell_type": pd.Categorical([f"type{k}" for k in context])},
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene{i}" for i in range(n_genes)])
    tmp = path.with_suffix(".partial")
    ad.AnnData(obs=obs, var=var).write_h5ad(tmp)
    with h5py.File(tmp, "a") as f:
        for start in range(0, n_cells, WRITE_CHUNK):
            stop = min(start + WRITE_CHUNK, n_cells)
            logits = base[context[start:stop]] + effects[pert[start:stop]] * (1.0 + 0.3 * context[start:stop, None])
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            mu = rng.lognormal(np.log(2500.0), 0.3, size=(stop - start, 1)) * p
            block = sp.csr_matrix(rng.poisson(rng.gamma(8.0, mu / 8.0)).astype(np.float32))
            if start == 0:
                if "X" in f:  # an empty placeholder, where anndata writes one
                    del f["X"]
                write_elem(f, "X", block, dataset_kwargs={"chunks": (1 << 16,)})
            else:
                sparse_dataset(f["X"]).append(block)
    os.replace(tmp, path)


def peak_and_wall(time_log: str) -> tuple[float, float, float]:
    """Peak RSS (MiB), wall seconds and CPU seconds (user + system) from ``/usr/bin/time -v``."""
    rss = float(re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_log).group(1)) / 1024
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", time_log).group(1)) for kind in ("User", "System"))
    clock = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", time_log).group(1)
    wall = 0.0
    for part in clock.split(":"):
        wall = wall * 60 + float(part)
    return rss, wall, cpu


def run_train(data: Path, in_memory: bool, max_epochs: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="pf_scale_model_"))
    cmd = [
        "perturbflow", "train", str(data), "--perturbation-key", "perturbation", "--control", "control",
        "--context-key", "cell_type", "--out", str(out / "model"), "--max-epochs", str(max_epochs),
        "--accelerator", "cpu", "--quiet",
    ]
    if in_memory:
        cmd.append("--in-memory")
    exe = Path(sys.executable).with_name("perturbflow")
    proc = subprocess.run(["/usr/bin/time", "-v", str(exe), *cmd[1:]], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{proc.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    rss, wall, cpu = peak_and_wall(proc.stderr)
    # the command as run, with this machine's folders named generically
    shown = shlex.join(cmd).replace(str(out / "model"), "MODEL_DIR").replace(str(data.parent), "DATA_DIR")
    return {"peak_rss_mib": round(rss), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "command": shown}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "pf_scale")
    parser.add_argument("--in-memory", action="store_true", help="load the whole file (the path before Step 6)")
    parser.add_argument("--max-epochs", type=int, default=1)
    parser.add_argument("--generate-only", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    for n in args.sizes:
        data = args.data_dir / f"cells_{n}.h5ad"
        if not data.exists():
            start = time.perf_counter()
            write_synthetic(data, n)
            print(f"wrote {data} ({data.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - start:.0f} s")
        if args.generate_only:
            continue
        row = {
            "n_cells": n,
            "n_genes": N_GENES,
            "mode": "in_memory" if args.in_memory else "from_disk",
            "file_gib": round(data.stat().st_size / 2**30, 2),
            "max_epochs": args.max_epochs,
            **run_train(data, args.in_memory, args.max_epochs),
        }
        print(row)
        new = not args.out.exists()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)


if __name__ == "__main__":
    main()
