"""Shared fixtures: single-threaded math, a small synthetic dataset, one small trained model."""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # before scanpy imports numba: its threads would raise torch's count

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

import perturbflow as pf

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NORMAN_FILE = SHARED_DATA / "perturbench_devel_norman2019_mcfaline2023.h5ad"
KANG_FILE = SHARED_DATA / "kang2018_ifnb_pbmc_scgen_valid.h5ad"
GEARS_FILE = SHARED_DATA / "norman2019_gears_format_tiny.h5ad"


def require(path: Path) -> Path:
    """Skip the test, naming the file, when the shared real data is absent."""
    if not path.exists():
        pytest.skip(f"real data not available: {path.name} (expected in ../shared/data beside the repository)")
    return path


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One torch and BLAS thread: on tensors this small, threads on 2 shared cores cost more than they save."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(n_threads)


def small_synthetic(seed: int = 0) -> ad.AnnData:
    adata = pf.datasets.synthetic(
        n_genes=60, n_atoms=5, n_combos=4, n_cells_per_group=40, n_control_cells=120,
        n_heldout_combos=2, seed=seed,
    )
    pf.PerturbFlow.setup_anndata(
        adata, perturbation_key="perturbation", control_value="control",
        context_keys=["cell_type"], split_key="split",
    )
    return adata


@pytest.fixture(scope="session")
def synthetic_adata() -> ad.AnnData:
    return small_synthetic()


@pytest.fixture(scope="session")
def trained_model(synthetic_adata):
    model = pf.PerturbFlow(synthetic_adata, n_latent=8, flow_steps_per_epoch=20)
    model.train(max_epochs=15, progress_bar=False)
    return model


@pytest.fixture(scope="session")
def controls(synthetic_adata) -> ad.AnnData:
    return synthetic_adata[synthetic_adata.obs["perturbation"] == "control"].copy()


def is_integer_matrix(X) -> bool:
    values = X.data if hasattr(X, "data") and not isinstance(X, np.ndarray) else np.asarray(X)
    return bool(np.all(values >= 0) and np.all(values == np.round(values)))
