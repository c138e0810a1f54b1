"""Baselines: output contract, known deltas on constructed data, the linear model, the ceiling."""

from __future__ import annotations

from collections.abc import Iterator

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from perturbflow._errors import PerturbFlowError
from perturbflow.data import mean_exact_shift, synthetic
from perturbflow.metrics import (
    Baseline,
    evaluate_predictions,
    get_baseline,
    list_baselines,
    log_normalize,
    noise_ceiling_split,
    register_baseline,
)

KEYS = {"perturbation_key": "perturbation", "control_value": "control"}


@pytest.fixture(autouse=True)
def _one_blas_thread() -> Iterator[None]:
    """One BLAS thread: threaded BLAS oversubscribes the cores of a small shared machine."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def small() -> ad.AnnData:
    return synthetic(
        n_genes=50, n_atoms=4, n_combos=3, n_contexts=2, n_cells_per_group=30,
        n_control_cells=60, n_effect_genes=8, n_heldout_combos=2, seed=2,
    )


def _lognorm(counts: np.ndarray) -> np.ndarray:
    return log_normalize(np.atleast_2d(counts).astype(np.float64)).astype(np.float64)[0]


@pytest.fixture(scope="module")
def constructed() -> tuple[ad.AnnData, dict[tuple[str, str], np.ndarray]]:
    """Identical cells within each group, so every group mean is known exactly.

    c1: control, A (2 cells), B (3 cells); c2: control, A, C, A+B; c3: control, C.
    """
    rng = np.random.default_rng(0)
    groups = [("control", "c1", 2), ("A", "c1", 2), ("B", "c1", 3),
              ("control", "c2", 2), ("A", "c2", 3), ("C", "c2", 2), ("A+B", "c2", 2),
              ("control", "c3", 2), ("C", "c3", 4)]
    rows, pert, ctx, profile = [], [], [], {}
    for p, c, n in groups:
        counts = rng.poisson(30, size=6).astype(np.float64) + 1
        profile[(p, c)] = _lognorm(counts)
        rows += [counts] * n
        pert += [p] * n
        ctx += [c] * n
    obs = pd.DataFrame({"perturbation": pert, "cell_type": ctx})
    obs.index = [f"cell{i}" for i in range(len(obs))]
    adata = ad.AnnData(np.array(rows), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(6)]))
    effect = {k: v - profile[("control", k[1])] for k, v in profile.items() if k[0] != "control"}
    return adata, effect


def _fit(name: str, adata: ad.AnnData, **kw) -> Baseline:
    return get_baseline(name)(**kw).fit(adata, context_keys="cell_type", **KEYS)


def _controls(adata: ad.AnnData) -> ad.AnnData:
    return adata[adata.obs["perturbation"] == "control"].copy()


@pytest.mark.parametrize("name", list_baselines())
def test_output_contract(name: str, small: ad.AnnData) -> None:
    train = small[small.obs["split"] == "train"].copy()
    ctrl = _controls(small)[::10]  # 6 cells per context
    ctrl = ctrl[:, ctrl.var_names[::-1]].copy()  # any gene order; output is in training order
    perts = ["G0", small.uns["synthetic"]["heldout_combos"][0], "G9"]  # seen, combo, unseen
    pred = _fit(name, train).predict(ctrl, perts)
    assert pred.shape == (ctrl.n_obs * len(perts), small.n_vars)
    assert list(pred.var_names) == list(small.var_names)
    assert pred.obs["perturbation"].tolist() == [p for p in perts for _ in range(ctrl.n_obs)]
    assert pred.obs["cell_type"].tolist() == ctrl.obs["cell_type"].tolist() * len(perts)
    assert pred.obs_names.is_unique
    assert np.all(np.isfinite(pred.X)) and pred.X.min() >= 0


def test_control_baseline_returns_the_control_cells(small: ad.AnnData) -> None:
    ctrl = _controls(small)[:5]
    pred = _fit("control", small).predict(ctrl, ["G1"])
    np.testing.assert_allclose(pred.X, ctrl.X.toarray(), rtol=1e-5, atol=1e-4)


def test_pooled_means(constructed) -> None:
    adata, effect = constructed
    model = _fit("train_mean", adata)
    counts = {("A", "c1"): 2, ("B", "c1"): 3, ("A", "c2"): 3, ("C", "c2"): 2, ("A+B", "c2"): 2,
              ("C", "c3"): 4}
    expected = sum(n * effect[k] for k, n in counts.items()) / sum(counts.values())
    np.testing.assert_allclose(model.delta(frozenset({"Q"}), "c1"), expected, atol=1e-6)
    context_mean = _fit("context_mean", adata)
    c1 = (2 * effect[("A", "c1")] + 3 * effect[("B", "c1")]) / 5
    np.testing.assert_allclose(context_mean.delta(frozenset({"Q"}), "c1"), c1, atol=1e-6)
    np.testing.assert_allclose(context_mean.delta(frozenset({"Q"}), "new"), expected, atol=1e-6)
    assert np.all(model.delta(frozenset(), "c1") == 0)  # the control itself


def test_mean_shift_known_deltas(constructed) -> None:
    adata, effect = constructed
    model = _fit("mean_shift", adata)
    a = frozenset({"A"})
    np.testing.assert_allclose(
        model.delta(a, "c3"), (effect[("A", "c1")] + effect[("A", "c2")]) / 2, atol=1e-6
    )
    np.testing.assert_allclose(model.delta(a, "c1"), effect[("A", "c2")], atol=1e-6)
    np.testing.assert_allclose(model.delta(frozenset({"C"}), "c1"),
                               (effect[("C", "c2")] + effect[("C", "c3")]) / 2, atol=1e-6)
    np.testing.assert_allclose(model.delta(frozenset({"B"}), "c1"), model.train_effect)


def test_additive_known_deltas(constructed) -> None:
    adata, effect = constructed
    model = _fit("additive", adata)
    ab = frozenset({"A", "B"})
    np.testing.assert_allclose(model.delta(ab, "c1"), effect[("A", "c1")] + effect[("B", "c1")],
                               atol=1e-6)
    np.testing.assert_allclose(model.delta(ab, "c2"), effect[("A+B", "c2")], atol=1e-6)  # seen
    c_mean = (effect[("C", "c2")] + effect[("C", "c3")]) / 2  # C never seen in c1
    np.testing.assert_allclose(model.delta(frozenset({"A", "C"}), "c1"),
                               effect[("A", "c1")] + c_mean, atol=1e-6)
    np.testing.assert_allclose(model.delta(frozenset({"A", "D"}), "c1"),
                               effect[("A", "c1")] + model.train_effect, atol=1e-6)
    # predicted cells: each control cell's log expression plus the delta, clipped at 0
    ctrl = _controls(adata)
    pred = model.predict(ctrl, ["B+A"])
    totals = ctrl.X.sum(axis=1, keepdims=True)
    log_pred = np.log1p(pred.X / totals * 1e4)
    c1 = (ctrl.obs["cell_type"] == "c1").to_numpy()
    expected = np.maximum(log_normalize(ctrl.X[c1]) + model.delta(ab, "c1"), 0)
    np.testing.assert_allclose(log_pred[c1], expected, atol=1e-5)


def _linear_data(seed: int = 0) -> ad.AnnData:
    """One context, 12 genes; perturbations target genes g0..g7 and a non-gene Z."""
    rng = np.random.default_rng(seed)
    n_genes = 12
    base = rng.normal(2.0, 0.5, size=n_genes)
    mix = rng.normal(0, 0.4, size=(n_genes, n_genes))
    labels = ["control", "g0", "g1", "g2", "g3", "g4", "g5", "g0+g1", "g2+g3", "Z"]
    rows, obs = [], []
    for lab in labels:
        eff = np.zeros(n_genes)
        for atom in lab.split("+"):
            if atom.startswith("g"):
                eff += mix[int(atom[1:])]
        mu = np.exp(base + eff)
        mu = 3000 * mu / mu.sum()
        rows.append(rng.poisson(mu, size=(40, n_genes)))
        obs += [lab] * 40
    return ad.AnnData(
        np.vstack(rows).astype(np.float32),
        obs=pd.DataFrame({"perturbation": obs}, index=[f"c{i}" for i in range(len(obs))]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]),
    )


def test_linear_equals_paper_formulation() -> None:
    """In one context the delta model equals Y ≈ G W Pᵀ + b on pseudobulk expression."""
    adata = _linear_data()
    k, lam = 3, 0.1
    model = get_baseline("linear")(n_components=k, ridge=lam).fit(adata, **KEYS)
    L = log_normalize(adata).astype(np.float64)
    labels = adata.obs["perturbation"].to_numpy()
    conds = ["g0", "g1", "g2", "g3", "g4", "g5", "g0+g1", "g2+g3", "Z"]
    Y = np.stack([L[labels == c].mean(0) for c in conds], axis=1)  # genes x conditions
    b = Y.mean(axis=1, keepdims=True)
    centred = Y - b
    U, S, _ = np.linalg.svd(centred - centred.mean(axis=0), full_matrices=False)
    G = U[:, :k] * S[:k]
    index = {g: i for i, g in enumerate(adata.var_names)}

    def embed(label: str) -> np.ndarray:
        return sum(G[index[a]] for a in label.split("+"))

    fit = [c for c in conds if c != "Z"]
    P = np.stack([embed(c) for c in fit])
    Yfit = centred[:, [conds.index(c) for c in fit]]
    W = (np.linalg.inv(G.T @ G + lam * np.eye(k)) @ G.T @ Yfit @ P
         @ np.linalg.inv(P.T @ P + lam * np.eye(k)))
    ctrl = L[labels == "control"].mean(0)
    for label in ["g6", "g7+g2", "g0+g1"]:
        expected = b[:, 0] + G @ W @ embed(label) - ctrl
        atoms = frozenset(label.split("+"))
        np.testing.assert_allclose(model.delta(atoms, "all"), expected, atol=1e-8)
    # a perturbed gene that is not measured falls back to the training mean
    np.testing.assert_allclose(model.delta(frozenset({"Z"}), "all"), model.train_effect)
    np.testing.assert_allclose(model.delta(frozenset({"g1", "Z"}), "all"), model.train_effect)


def test_additive_exact_hits_the_additive_mean_of_log_expression(constructed) -> None:
    adata, _ = constructed
    additive, exact = _fit("additive", adata), _fit("additive_exact", adata)
    ctrl = _controls(adata)
    c1 = (ctrl.obs["cell_type"] == "c1").to_numpy()
    target = np.maximum(log_normalize(ctrl.X[c1]).mean(0) + additive.delta(frozenset({"A", "B"}), "c1"), 0)
    totals = ctrl.X[c1].sum(axis=1, keepdims=True)
    mean_of = {}
    for name, model in (("additive", additive), ("additive_exact", exact)):
        pred = model.predict(ctrl[c1], ["A+B"])
        mean_of[name] = np.log1p(pred.X / totals * 1e4).mean(0)
    np.testing.assert_allclose(mean_of["additive_exact"], target, atol=1e-5)


def test_mean_exact_shift_undoes_the_lift_of_clipping_at_zero() -> None:
    cells = np.array([[0.0, 2.0], [1.0, 2.0], [3.0, 2.0]])  # (3 cells, 2 genes)
    delta = np.array([-1.0, -1.0])
    plain = np.maximum(cells + delta, 0).mean(0)
    assert plain[0] == pytest.approx(2 / 3)  # the zero cannot go down: 1/3 above the target 1/3
    shift = mean_exact_shift(cells, delta)
    np.testing.assert_allclose(np.maximum(cells + shift, 0).mean(0), [1 / 3, 1.0], atol=1e-9)
    assert shift[1] == pytest.approx(-1.0)  # no clipping, no change


def test_additive_beats_control_on_heldout_combos(small: ad.AnnData) -> None:
    train = small[small.obs["split"] == "train"].copy()
    test = small[(small.obs["split"] == "test") | (small.obs["perturbation"] == "control")].copy()
    heldout = small.uns["synthetic"]["heldout_combos"]
    ctrl = _controls(test)
    scores = {}
    for name in ["control", "additive"]:
        pred = _fit(name, train).predict(ctrl, heldout)
        table = evaluate_predictions(pred, test, context_keys="cell_type", **KEYS)
        scores[name] = table.set_index(["perturbation", "context"])
    assert (scores["additive"]["pearson_delta"] > 0.6).all()
    assert (scores["additive"]["mse_top20"] < scores["control"]["mse_top20"]).all()
    assert (scores["additive"]["energy_distance"] < scores["control"]["energy_distance"]).all()


def test_noise_ceiling_split(small: ad.AnnData) -> None:
    half_pred, half_real = noise_ceiling_split(small, seed=3, context_keys="cell_type", **KEYS)
    is_ctrl = small.obs["perturbation"] == "control"
    for half in (half_pred, half_real):
        assert set(small.obs_names[is_ctrl]) <= set(half.obs_names)
    pred_pert = set(half_pred.obs_names) - set(small.obs_names[is_ctrl])
    real_pert = set(half_real.obs_names) - set(small.obs_names[is_ctrl])
    assert not pred_pert & real_pert
    assert pred_pert | real_pert == set(small.obs_names[~is_ctrl])
    sizes = half_pred.obs.groupby(["perturbation", "cell_type"], observed=True).size()
    assert (sizes.drop("control", level=0) == 15).all()  # half of every group of 30
    again, _ = noise_ceiling_split(small, seed=3, context_keys="cell_type", **KEYS)
    assert list(again.obs_names) == list(half_pred.obs_names)


def test_registry_and_errors(small: ad.AnnData) -> None:
    assert {"control", "train_mean", "context_mean", "mean_shift", "additive", "linear"} <= set(
        list_baselines()
    )
    with pytest.raises(PerturbFlowError, match="unknown baseline 'nope'; known baselines: add"):
        get_baseline("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_baseline("control")(type("Dup", (Baseline,), {}))
    with pytest.raises(PerturbFlowError, match="not fitted"):
        get_baseline("control")().predict(small, ["G0"])
    model = _fit("additive", small)
    ctrl = _controls(small)
    with pytest.raises(PerturbFlowError, match="lack 5 of the 50 training genes"):
        model.predict(ctrl[:, 5:].copy(), ["G0"])
    with pytest.raises(PerturbFlowError, match="'cell_type' not found"):
        model.predict(ad.AnnData(ctrl.X, var=ctrl.var), ["G0"])
