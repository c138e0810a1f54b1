"""Training from disk: counts read by rows from a backed .h5ad or a .zarr store give the same
statistics as counts in memory, and a model trains and predicts from them (API and CLI)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import perturbflow as pf
from perturbflow._errors import PerturbFlowError
from perturbflow.cli import main
from perturbflow.data import (
    _streaming,
    get_counts,
    is_on_disk,
    log_normalize_rows,
    open_on_disk,
    read_rows,
)
from perturbflow.nn import CountVAE
from perturbflow.train import cells_by_group, count_statistics, gene_space_shifts

from .conftest import small_synthetic

TRAIN = ["--perturbation-key", "perturbation", "--control", "control", "--context-key", "cell_type",
         "--split-key", "split", "--max-epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def on_disk(tmp_path_factory, synthetic_adata):
    """The synthetic data written as .h5ad (counts in X) and .zarr (counts in a layer)."""
    d = tmp_path_factory.mktemp("disk")
    data = synthetic_adata.copy()
    del data.uns["perturbflow"]
    data.write_h5ad(d / "data.h5ad")
    layered = data.copy()
    layered.layers["counts"] = layered.X.copy()
    layered.X = log_normalize_rows(layered.X)
    layered.write_zarr(d / "data.zarr")
    return d


def groups_of(adata):
    reg = pf.data.get_registry(adata)
    atoms = pf.data.perturbation_atoms(adata, reg)
    contexts = pf.data.context_labels(adata, reg.context_keys)
    control = np.array([len(a) == 0 for a in atoms])
    known = {a for s in atoms for a in s}
    return cells_by_group(atoms, contexts, ~control, set(contexts), known), control, contexts


def test_statistics_from_disk_equal_those_in_memory(on_disk, synthetic_adata, monkeypatch):
    monkeypatch.setattr(_streaming, "CHUNK_ROWS", 97)  # many blocks, the last one short
    cells, control, contexts = groups_of(synthetic_adata)
    counts = get_counts(synthetic_adata)
    before = gene_space_shifts(log_normalize_rows(counts), cells, control, contexts)
    in_memory = count_statistics(counts, cells, control, contexts)
    disk = open_on_disk(on_disk / "data.h5ad").X
    assert is_on_disk(disk) and not is_on_disk(counts)
    streamed = count_statistics(disk, cells, control, contexts)
    for k in cells:  # in memory: exactly what the whole-matrix computation gave
        np.testing.assert_array_equal(in_memory[0][k], before[0][k])
        assert in_memory[2][k] == before[2][k]
        np.testing.assert_allclose(streamed[0][k], before[0][k], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(streamed[2][k], before[2][k], rtol=1e-8)
    for c in before[1]:
        np.testing.assert_allclose(streamed[1][c], before[1][c], rtol=1e-10, atol=1e-12)
    library = np.asarray(counts.sum(axis=1), dtype=np.float32).ravel()
    np.testing.assert_array_equal(in_memory[3], library)
    np.testing.assert_array_equal(streamed[3], library)


def test_read_rows_keeps_the_order_asked(on_disk, synthetic_adata):
    disk = open_on_disk(on_disk / "data.h5ad").X
    counts = get_counts(synthetic_adata)
    for rows in (np.array([7, 3, 500, 2, 3]), np.arange(10, 40), np.array([0, counts.shape[0] - 1])):
        np.testing.assert_array_equal(read_rows(disk, rows).toarray(), counts[rows].toarray())


def test_vae_fits_the_same_from_disk(on_disk, synthetic_adata):
    config = pf.PerturbFlowConfig(n_latent=4)
    rows = np.flatnonzero(synthetic_adata.obs["split"].to_numpy() != "test")
    fits = []
    for counts in (get_counts(synthetic_adata), open_on_disk(on_disk / "data.h5ad").X):
        torch.manual_seed(0)  # the same initial weights and minibatch order
        fits.append(CountVAE.fit(counts, rows, synthetic_adata.var_names.tolist(), config, max_epochs=1,
                                 progress_bar=False))
    latents = [vae.latent(get_counts(synthetic_adata), rows) for vae in fits]
    np.testing.assert_allclose(latents[0], latents[1], rtol=1e-5, atol=1e-6)


def test_backed_anndata_trains_and_predicts(on_disk, synthetic_adata, controls):
    adata = ad.read_h5ad(on_disk / "data.h5ad", backed="r")
    pf.PerturbFlow.setup_anndata(adata, perturbation_key="perturbation", control_value="control",
                                 context_keys=["cell_type"], split_key="split")
    model = pf.PerturbFlow(adata, n_latent=8, flow_steps_per_epoch=5)
    model.train(max_epochs=1, progress_bar=False)
    assert is_on_disk(get_counts(adata))
    # the gene-space shifts of the training groups, as the in-memory counts give them
    fitted = synthetic_adata.obs["split"].to_numpy() == "train"
    cells, control, contexts = groups_of(synthetic_adata)
    cells = {k: v[fitted[v]] for k, v in cells.items() if fitted[v].any()}
    shifts = gene_space_shifts(log_normalize_rows(get_counts(synthetic_adata)), cells, control & fitted, contexts)[0]
    assert set(model.gene_prior.shifts) == set(shifts)
    for k, shift in shifts.items():
        np.testing.assert_allclose(model.gene_prior.shifts[k], shift, rtol=1e-6, atol=1e-7)  # kept as float32
    assert model.get_latent_representation().shape == (adata.n_obs, 8)
    pred = model.predict(controls, perturbations=["G0+G1"], n_cells=20)
    assert pred.shape == (20, adata.n_vars) and np.isfinite(pred.layers["expected"]).all()


def test_cli_trains_from_h5ad_and_zarr_on_disk(on_disk, capsys):
    for data, extra in (("data.h5ad", []), ("data.zarr", ["--layer", "counts"])):
        model_dir = on_disk / f"model_{data}"
        assert main(["train", str(on_disk / data), *TRAIN, *extra, "--out", str(model_dir)]) == 0
        out = on_disk / f"pred_{data}.h5ad"
        code = main(["predict", str(model_dir), "--control-cells", str(on_disk / "data.h5ad"),
                     "--perturbations", "G0", "--n-cells", "10", "--out", str(out)])
        assert code == 0 and ad.read_h5ad(out).shape == (10, 60)
        assert pf.PerturbFlow.load(model_dir).registry.layer == (extra[1] if extra else None)
    capsys.readouterr()


def test_open_on_disk_errors(tmp_path):
    with pytest.raises(PerturbFlowError, match="layer 'raw' not found"):
        open_on_disk(_write(tmp_path / "a.h5ad"), layer="raw")
    with pytest.raises(PerturbFlowError, match="CSC"):
        open_on_disk(_write(tmp_path / "b.h5ad", sp.csc_matrix))
    with pytest.raises(PerturbFlowError, match="file not found"):
        open_on_disk(tmp_path / "missing.h5ad")


def _write(path, fmt=sp.csr_matrix):
    adata = small_synthetic()
    adata.X = fmt(adata.X)
    adata.write_h5ad(path)
    return path
