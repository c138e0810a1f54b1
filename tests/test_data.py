"""Setup and validation, perturbation parsing, pairing and the synthetic generator."""

from __future__ import annotations

import itertools

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import perturbflow as pf
from perturbflow import PerturbFlowError
from perturbflow.data import check_counts, get_registry, ot_pairing, parse_perturbation
from tests.conftest import GEARS_FILE, require


@pytest.mark.parametrize(
    ("label", "atoms"),
    [
        ("KLF1+MAP2K6", {"KLF1", "MAP2K6"}),
        ("MAP2K6+KLF1", {"KLF1", "MAP2K6"}),
        ("KLF1+ctrl", {"KLF1"}),
        ("ctrl+KLF1", {"KLF1"}),
        ("KLF1", {"KLF1"}),
        ("ctrl", set()),
        ("control", set()),
    ],
)
def test_parse_perturbation(label, atoms):
    assert parse_perturbation(label, "control") == frozenset(atoms)


def test_gears_file_parses():
    adata = ad.read_h5ad(require(GEARS_FILE))
    pf.PerturbFlow.setup_anndata(adata, perturbation_key="condition", control_value="ctrl", layer="counts")
    from perturbflow.data import perturbation_atoms

    atoms = perturbation_atoms(adata, get_registry(adata))
    labels = adata.obs["condition"].astype(str).to_numpy()
    assert all(len(a) == 0 for a, lab in zip(atoms, labels) if lab == "ctrl")
    assert all(len(a) == 1 for a, lab in zip(atoms, labels) if "ctrl" in lab.split("+") and lab != "ctrl")
    assert any(len(a) == 2 for a in atoms)


def _adata(X, labels=("control", "A", "B", "A+B")) -> ad.AnnData:
    n = X.shape[0]
    obs = pd.DataFrame({"perturbation": [labels[i % len(labels)] for i in range(n)], "cell_type": "k562"})
    obs.index = obs.index.astype(str)
    return ad.AnnData(X=X, obs=obs)


@pytest.mark.parametrize("sparse", [False, True])
def test_setup_accepts_counts(sparse):
    X = np.random.default_rng(0).poisson(2.0, size=(8, 5)).astype(np.float32)
    adata = _adata(sp.csr_matrix(X) if sparse else X)
    pf.PerturbFlow.setup_anndata(adata, context_keys="cell_type")
    reg = get_registry(adata)
    assert reg.perturbation_key == "perturbation" and reg.context_keys == ["cell_type"]


@pytest.mark.parametrize(
    ("value", "message"),
    [(-1.0, "negative"), (0.5, "not integers"), (np.nan, "NaN or infinite"), (np.inf, "NaN or infinite")],
)
@pytest.mark.parametrize("sparse", [False, True])
def test_bad_counts(value, message, sparse):
    X = np.ones((8, 5), dtype=np.float32)
    X[3, 2] = value
    adata = _adata(sp.csr_matrix(X) if sparse else X)
    with pytest.raises(PerturbFlowError, match=message):
        pf.PerturbFlow.setup_anndata(adata)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"perturbation_key": "guide"}, "perturbation key 'guide' not found"),
        ({"control_value": "NT"}, "control label 'NT' not found"),
        ({"layer": "counts"}, "layer 'counts' not found"),
        ({"context_keys": ["donor"]}, "context key 'donor' not found"),
        ({"split_key": "fold"}, "split key 'fold' not found"),
    ],
)
def test_setup_errors_name_the_cause(kwargs, message):
    adata = _adata(np.ones((8, 5), dtype=np.float32))
    with pytest.raises(PerturbFlowError, match=message):
        pf.PerturbFlow.setup_anndata(adata, **kwargs)


def test_only_controls_and_no_cells():
    adata = _adata(np.ones((4, 5), dtype=np.float32), labels=("control",))
    with pytest.raises(PerturbFlowError, match="only control cells"):
        pf.PerturbFlow.setup_anndata(adata)
    with pytest.raises(PerturbFlowError, match="no cells"):
        pf.PerturbFlow.setup_anndata(adata[:0].copy())


def test_bad_split_values():
    adata = _adata(np.ones((8, 5), dtype=np.float32))
    adata.obs["split"] = "holdout"
    with pytest.raises(PerturbFlowError, match="allowed values are train, val, test"):
        pf.PerturbFlow.setup_anndata(adata, split_key="split")


def test_check_counts_does_not_densify_chunks(monkeypatch):
    import perturbflow.data._validate as validate

    monkeypatch.setattr(validate, "CHUNK_ROWS", 3)
    X = sp.random(10, 6, density=0.5, format="csr", random_state=0)
    X.data = np.round(X.data * 10) + 1
    X[9, 0] = -2.0
    with pytest.raises(PerturbFlowError, match="negative"):
        check_counts(ad.AnnData(X=X))


def test_ot_pairing_is_optimal():
    rng = np.random.default_rng(0)
    x0, x1 = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    perm = ot_pairing(x0, x1)
    best = min(((x0 - x1[list(p)]) ** 2).sum() for p in itertools.permutations(range(6)))
    assert ((x0 - x1[perm]) ** 2).sum() == pytest.approx(best)


def test_synthetic_is_seeded_and_well_formed():
    a, b = pf.datasets.synthetic(seed=3), pf.datasets.synthetic(seed=3)
    assert (a.X != b.X).nnz == 0
    assert (a.X != pf.datasets.synthetic(seed=4).X).nnz > 0
    assert np.all(a.X.data == np.round(a.X.data)) and a.X.data.min() >= 0
    labels = set(a.obs["perturbation"])
    assert "control" in labels and any("+" in x for x in labels)
    assert a.obs["cell_type"].nunique() >= 2
    truth = a.uns["synthetic"]
    assert truth["interacting_combos"] and set(truth["heldout_combos"]) <= labels
    assert set(a.obs.loc[a.obs["split"] == "test", "perturbation"]) == set(truth["heldout_combos"])
    for combo in truth["heldout_combos"]:  # singles of held-out combos stay in training
        assert set(combo.split("+")) <= set(a.obs.loc[a.obs["split"] == "train", "perturbation"])


def test_ot_sets_pair_cells_closer_than_random_or_small_batch_ot():
    from perturbflow.data import Group, PairedSetDataset

    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 20)).astype(np.float32)
    z[200:] += 0.5  # perturbed cells: the controls shifted
    group = Group("p", 0, np.array([1]), np.arange(200, 400), np.arange(200), np.zeros(20))
    stats = np.zeros((1, 40))

    def mean_sq_pair_distance(dataset):
        items = [dataset[i] for i in range(100)]
        assert all(it["x_0"].shape == (32, 20) for it in items)
        return float(np.mean([((it["x_1"] - it["x_0"]) ** 2).sum(-1).mean() for it in items]))

    ot = mean_sq_pair_distance(PairedSetDataset(z, [group], stats, 32, coupling="ot"))
    random = mean_sq_pair_distance(PairedSetDataset(z, [group], stats, 32, coupling="random"))
    small_batch = np.mean([
        ((z[t][ot_pairing(z[s], z[t])] - z[s]) ** 2).sum(-1).mean()
        for s, t in (
            (rng.choice(200, 32), rng.choice(np.arange(200, 400), 32)) for _ in range(100)
        )
    ])
    assert ot < small_batch < random


def test_gaussian_map_recovers_an_affine_map_with_a_symmetric_positive_matrix():
    # x1 = B x0 + c with B symmetric positive definite is the gradient of a convex function, so
    # it is the optimal map; the sample covariances obey S1 = B S0 B exactly, so the
    # Gaussian formula returns B itself, up to the (here small) shrinkage of S1 towards S0
    from perturbflow.data import gaussian_map
    from perturbflow.data._pairing import covariance_shrinkage

    rng = np.random.default_rng(1)
    x0 = rng.normal(size=(3000, 5)) @ rng.normal(size=(5, 5))
    q = np.linalg.qr(rng.normal(size=(5, 5)))[0]
    b = q @ np.diag([0.5, 0.8, 1.0, 1.5, 2.0]) @ q.T
    c = rng.normal(size=5)
    x1 = x0 @ b.T + c
    assert covariance_shrinkage(x1, np.cov(x0, rowvar=False)) < 0.01
    transport = gaussian_map(x0, x1)
    np.testing.assert_allclose(transport.a, b, atol=0.02)
    np.testing.assert_allclose(transport(x0).mean(0), x1.mean(0), atol=1e-8)


def test_covariance_shrinkage_is_ledoit_wolf_towards_the_target():
    """The intensity is the summed sampling variance of the covariance's entries (each
    cell's outer product's spread around it, over n squared) over the squared distance to
    the target: checked against the sum written out cell by cell, and at its two ends."""
    from perturbflow.data._pairing import covariance_shrinkage, shrunk_covariance

    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 6)) * np.linspace(0.5, 2.0, 6)
    target = np.eye(6)
    y = x - x.mean(0)
    s = y.T @ y / len(x)
    spread = sum(((np.outer(r, r) - s) ** 2).sum() for r in y) / len(x) ** 2
    expected = min(1.0, spread / ((s - target) ** 2).sum())
    assert covariance_shrinkage(x, target) == pytest.approx(expected, rel=1e-10)
    lam = covariance_shrinkage(x, target)
    np.testing.assert_allclose(shrunk_covariance(x, target), lam * target + (1 - lam) * np.cov(x, rowvar=False))
    # a few cells of the target's own distribution: nearly all target; many of another: nearly none
    assert covariance_shrinkage(rng.normal(size=(35, 20)), np.eye(20)) > 0.8
    assert covariance_shrinkage(rng.normal(size=(20000, 6)) * np.linspace(0.5, 2.0, 6), target) < 0.01


def test_gaussian_map_of_a_small_shifted_group_is_nearly_the_shift():
    """35 perturbed cells drawn like the controls, shifted: their sample covariance's noise
    would make the unshrunk map move every cell far from its shifted self; shrunk towards
    the controls' covariance the map stays near the shift (benchmarks/RESULTS.md, "Session 26")."""
    from perturbflow.data import gaussian_map
    from perturbflow.data._pairing import monge_matrix

    rng = np.random.default_rng(4)
    x0, x1 = rng.normal(size=(256, 20)), rng.normal(size=(35, 20)) + 1.0
    shrunk = gaussian_map(x0, x1)
    unshrunk = monge_matrix(np.cov(x0, rowvar=False), np.cov(x1, rowvar=False))

    def move_beyond_shift(a):
        return np.sqrt(((((x0 - x0.mean(0)) @ (a - np.eye(20)).T) ** 2).sum(1)).mean())

    assert move_beyond_shift(shrunk.a) < 0.5
    assert move_beyond_shift(unshrunk) > 4 * move_beyond_shift(shrunk.a)


def test_gaussian_sets_move_a_shifted_group_by_about_its_shift():
    # where the perturbed cells are the controls shifted, the Gaussian coupling moves each
    # control by about the shift (up to the moments' sampling error), while an exact OT plan
    # between 200 cells in 20 dimensions pairs them far from their shifted selves
    from perturbflow.data import Group, PairedSetDataset

    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 20)).astype(np.float32)
    z[200:] += 0.5  # squared length of the shift: 20 * 0.25 = 5
    group = Group("p", 0, np.array([1]), np.arange(200, 400), np.arange(200), np.zeros(20))
    stats = np.zeros((1, 40))

    def moves(coupling):
        dataset = PairedSetDataset(z, [group], stats, 32, coupling=coupling)
        return np.concatenate([(it["x_1"] - it["x_0"]).numpy() for it in (dataset[i] for i in range(50))])

    gaussian, ot = moves("gaussian"), moves("ot")
    shift = z[200:].mean(0) - z[:200].mean(0)  # the map keeps the two clouds' means
    assert np.abs(gaussian.mean(0) - shift).max() < 0.15
    around_mean = ((gaussian - gaussian.mean(0)) ** 2).sum(-1).mean()
    assert around_mean < 0.3 * ((ot - ot.mean(0)) ** 2).sum(-1).mean()


def test_gaussian_map_of_a_group_with_fewer_cells_than_dimensions_is_the_shift():
    from perturbflow.data import gaussian_map

    rng = np.random.default_rng(2)
    x0, x1 = rng.normal(size=(50, 6)), rng.normal(size=(1, 6)) + 2  # one perturbed cell
    transport = gaussian_map(x0, x1)
    np.testing.assert_array_equal(transport.a, np.eye(6))
    np.testing.assert_allclose(transport(x0) - x0, np.tile(x1[0] - x0.mean(0), (50, 1)))
