"""Execute every tutorial notebook (marked ``tutorials``: run with ``pytest -m tutorials``).

The notebooks read the small real files of ``../shared/data`` through ``PERTURBFLOW_DATA_DIR``
instead of downloading the full datasets, and write their figures into
``PERTURBFLOW_FIGURE_DIR``: a temporary folder, unless that variable is already set (to keep
the figures, e.g. ``PERTURBFLOW_FIGURE_DIR=benchmarks/figures pytest -m tutorials``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from tests.conftest import KANG_FILE, NORMAN_FILE, SHARED_DATA, require

TUTORIALS = sorted((Path(__file__).resolve().parents[1] / "tutorials").glob("[0-9][0-9]_*.ipynb"))
NEEDS = {"02": NORMAN_FILE, "03": KANG_FILE}

pytestmark = pytest.mark.tutorials


def test_there_are_tutorials():
    assert [p.name[:2] for p in TUTORIALS] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_outputs_are_stripped(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path, monkeypatch):
    import nbclient
    import nbformat

    if path.name[:2] in NEEDS:
        require(NEEDS[path.name[:2]])
    monkeypatch.setenv("PERTURBFLOW_DATA_DIR", str(SHARED_DATA))
    figures = Path(os.environ.get("PERTURBFLOW_FIGURE_DIR", tmp_path / "figures")).resolve()
    monkeypatch.setenv("PERTURBFLOW_FIGURE_DIR", str(figures))
    # One thread for torch and for numba: numba's first parallel run (scanpy's normalize_total,
    # neighbours, UMAP) otherwise starts one OpenMP thread per core, which torch then uses too,
    # and on shared CI cores that slows training many times over.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setenv("NUMBA_NUM_THREADS", os.environ.get("NUMBA_NUM_THREADS", "1"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(tmp_path)}}
    )
    start, start_wall = time.perf_counter(), time.time() - 1
    client.execute()
    print(f"{path.name}: {time.perf_counter() - start:.0f} s")
    written = [p for p in sorted(figures.glob(f"{path.name[:2]}_*.png")) if p.stat().st_mtime >= start_wall]
    assert written, "the tutorial wrote no figures"
    for png in written:
        image = mpimg.imread(png)[..., :3]
        assert image.std() > 0.01 and (image < 0.95).mean() > 0.005, f"{png.name} is blank"
