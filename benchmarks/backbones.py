"""Every registered backbone, default settings, on the three real held-out tasks.

Usage (from the repository root, with ../shared/data beside it)::

    python benchmarks/backbones.py        # writes benchmarks/results/backbones.csv
    python benchmarks/backbones.py --tasks norman mcfaline --seeds 0 --out benchmarks/results/backbones_folds.csv
    python benchmarks/report.py benchmarks/results/backbones_folds.csv --rank   # ranked on the folds

For each backbone: the metrics beside the baselines, training time, parameter count of the
velocity network and prediction cells per second.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts
from quality import main

from perturbflow.backbones import list_backbones

if __name__ == "__main__":
    main(backbones=tuple(list_backbones()), out_name="backbones.csv", doc=__doc__)
