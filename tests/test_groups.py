"""The flow's training groups: which cells form a group, and each group's gene-space shift."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from perturbflow.train import cells_by_group, gene_space_shifts


@pytest.fixture
def cells() -> tuple[list[frozenset], np.ndarray]:
    atoms = [frozenset(), frozenset(), frozenset({"A"}), frozenset({"A"}), frozenset({"A", "B"}),
             frozenset({"C"}), frozenset(), frozenset({"A"}), frozenset({"A"})]
    contexts = np.array(["x", "x", "x", "x", "x", "x", "y", "y", "z"])
    return atoms, contexts


def test_cells_by_group_skips_contexts_without_controls_and_unknown_atoms(cells, caplog) -> None:
    atoms, contexts = cells
    perturbed = np.array([len(a) > 0 for a in atoms])
    with caplog.at_level(logging.WARNING):
        groups = cells_by_group(atoms, contexts, perturbed, known_contexts={"x", "y"}, known_atoms={"A", "B"})
    assert set(groups) == {(frozenset({"A"}), "x"), (frozenset({"A", "B"}), "x"), (frozenset({"A"}), "y")}
    np.testing.assert_array_equal(groups[(frozenset({"A"}), "x")], [2, 3])
    np.testing.assert_array_equal(groups[(frozenset({"A"}), "y")], [7])
    assert "context z has no control cells" in caplog.text
    # the mask restricts the cells: row 3 left out
    masked = cells_by_group(atoms, contexts, perturbed & (np.arange(9) != 3), {"x", "y"}, {"A", "B"})
    np.testing.assert_array_equal(masked[(frozenset({"A"}), "x")], [2])


def test_gene_space_shifts_are_group_means_minus_their_context_controls(cells) -> None:
    atoms, contexts = cells
    logx = np.random.default_rng(0).gamma(2.0, size=(9, 4))
    control = np.array([len(a) == 0 for a in atoms])
    groups = cells_by_group(atoms, contexts, ~control, {"x", "y"}, {"A", "B", "C"})
    shifts, control_means, noise = gene_space_shifts(logx, groups, control, contexts)
    # sampling variance of the group's mean, var(group) / n, mean over genes (the control
    # mean's is shared by every shift of the context)
    expected = (logx[[2, 3]].var(0, ddof=1) / 2).mean()
    assert noise[(frozenset({"A"}), "x")] == pytest.approx(expected)
    np.testing.assert_allclose(control_means["x"], logx[[0, 1]].mean(0))
    np.testing.assert_allclose(control_means["y"], logx[6])
    np.testing.assert_allclose(shifts[(frozenset({"A"}), "x")], logx[[2, 3]].mean(0) - logx[[0, 1]].mean(0))
    np.testing.assert_allclose(shifts[(frozenset({"A"}), "y")], logx[7] - logx[6])
    np.testing.assert_allclose(shifts[(frozenset({"C"}), "x")], logx[5] - logx[[0, 1]].mean(0))


def test_context_axes_are_orthonormal_principal_axes_of_each_context():
    import scipy.sparse as sp
    from sklearn.decomposition import PCA

    from perturbflow.data import log_normalize
    from perturbflow.train import context_axes

    rng = np.random.default_rng(0)
    counts = sp.csr_matrix(rng.poisson(2.0, size=(60, 12)).astype(np.float32))
    rows = {"a": np.arange(0, 40), "b": np.arange(40, 60), "tiny": np.array([0, 1])}
    axes = context_axes(counts, rows, seed=0, n_axes=5, max_cells=40)
    assert set(axes) == {"a", "b"}  # fewer than 3 cells: no axes
    assert axes["a"].shape == (5, 12)
    assert np.allclose(axes["a"] @ axes["a"].T, np.eye(5), atol=1e-5)
    reference = PCA(5, random_state=0).fit(log_normalize(counts[40:60])).components_
    assert np.allclose(np.abs(axes["b"] @ reference.T), np.eye(5), atol=1e-4)  # the same axes, up to sign
    assert context_axes(counts, rows, seed=0, n_axes=5, max_cells=10)["a"].shape == (5, 12)  # a sample of 10
