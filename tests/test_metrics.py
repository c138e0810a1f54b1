"""Metrics: closed forms, scipy and cell-eval references, and evaluate_predictions end to end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from scipy import stats
from threadpoolctl import threadpool_limits

import perturbflow.metrics._distances as distances_module
from perturbflow._errors import PerturbFlowError
from perturbflow.data import synthetic
from perturbflow.metrics import (
    de_overlap,
    discrimination_score_l1,
    energy_distance,
    energy_floor,
    evaluate_predictions,
    get_baseline,
    log_normalize,
    mae,
    mmd_rbf,
    mse,
    noise_ceiling_split,
    pearson_delta,
    rank_genes,
    summarize,
    top_de_genes,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEVEL = DATA / "perturbench_devel_norman2019_mcfaline2023.h5ad"


@pytest.fixture(autouse=True)
def _one_blas_thread() -> Iterator[None]:
    """One BLAS thread: on a small shared machine, threaded BLAS oversubscribes the cores and
    runs a 500 x 500 eigendecomposition ~50x slower."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def small() -> ad.AnnData:
    """Two contexts, four atoms with singles and three combinations, 40 cells per group."""
    return synthetic(
        n_genes=60, n_atoms=4, n_combos=3, n_contexts=2, n_cells_per_group=40,
        n_control_cells=80, n_effect_genes=8, n_heldout_combos=1, seed=1,
    )


# --- expression -------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Some cells have zero counts")
@pytest.mark.parametrize("sparse", [False, True])
def test_log_normalize_matches_scanpy(sparse: bool) -> None:
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, size=(30, 20)).astype(np.float32)
    counts[4] = 0.0  # an empty cell stays zero
    X = sp.csr_matrix(counts) if sparse else counts
    ref = ad.AnnData(X=counts.copy())
    sc.pp.normalize_total(ref, target_sum=1e4)
    sc.pp.log1p(ref)
    out = log_normalize(X)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref.X, rtol=1e-5, atol=1e-6)
    adata = ad.AnnData(X=np.zeros_like(counts), layers={"counts": X})
    np.testing.assert_allclose(log_normalize(adata, layer="counts"), ref.X, rtol=1e-5, atol=1e-6)
    with pytest.raises(PerturbFlowError, match="layer 'raw' not found"):
        log_normalize(adata, layer="raw")


# --- mean-level metrics -----------------------------------------------------------------


def test_pearson_delta_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    ref, real, pred = rng.normal(size=(3, 50))
    expected = stats.pearsonr(pred - ref, real - ref).statistic
    assert pearson_delta(pred, real, ref) == pytest.approx(expected, abs=1e-12)
    genes = [1, 5, 7, 20, 33]
    expected = stats.pearsonr((pred - ref)[genes], (real - ref)[genes]).statistic
    assert pearson_delta(pred, real, ref, genes=genes) == pytest.approx(expected, abs=1e-12)
    assert pearson_delta(real, real, ref) == pytest.approx(1.0)
    assert np.isnan(pearson_delta(ref, real, ref))  # a zero delta has no correlation


def test_mse_mae_closed_form() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([1.0, 0.0, 3.0, 7.0])
    assert mse(a, b) == pytest.approx((0 + 4 + 0 + 9) / 4)
    assert mae(a, b) == pytest.approx((0 + 2 + 0 + 3) / 4)
    assert mse(a, b, genes=[1, 3]) == pytest.approx((4 + 9) / 2)
    assert mae(a, b, genes=[0, 2]) == 0.0
    with pytest.raises(PerturbFlowError, match="different lengths"):
        mse(a, b[:3])


def test_discrimination_closed_form() -> None:
    real = {"A": np.array([0.0, 0.0]), "B": np.array([1.0, 0.0]), "C": np.array([5.0, 5.0])}
    assert discrimination_score_l1(real, real) == {"A": 1.0, "B": 1.0, "C": 1.0}
    # A's prediction sits on C, B's between A and B (closer to B), C's on A
    pred = {"A": np.array([5.0, 5.0]), "B": np.array([0.8, 0.0]), "C": np.array([0.0, 0.0])}
    scores = discrimination_score_l1(pred, real)
    assert scores["A"] == pytest.approx(1 - 2 / 3)  # two real profiles closer than its own
    assert scores["B"] == pytest.approx(1.0)
    assert scores["C"] == pytest.approx(1 - 2 / 3)
    # on the first gene only, C's prediction (3) is as close to B (1) as to C (5): a tie,
    # counted against the prediction
    pred["C"] = np.array([3.0, 0.0])
    scores = discrimination_score_l1(pred, real, exclude={"C": [1]})
    assert scores["C"] == pytest.approx(1 - 1 / 3)
    assert np.isnan(discrimination_score_l1({"A": real["A"]}, {"A": real["A"]})["A"])


# --- DE ---------------------------------------------------------------------------------


def _de_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ctrl = rng.normal(2.0, 0.5, size=(60, 30))
    pert = rng.normal(2.0, 0.5, size=(50, 30))
    pert[:, :5] += np.array([3.0, -2.5, 2.0, -1.5, 1.0])  # five DE genes, largest first
    return pert, ctrl


def test_rank_genes_matches_scipy() -> None:
    pert, ctrl = _de_data()
    scores, _ = rank_genes(pert, ctrl, method="t-test")
    welch = stats.ttest_ind(pert, ctrl, equal_var=False)
    np.testing.assert_allclose(scores, welch.statistic, rtol=1e-5)
    # scanpy's Wilcoxon: normal approximation without tie or continuity correction, then BH
    _, pvals_adj = rank_genes(pert, ctrl, method="wilcoxon")
    p = stats.mannwhitneyu(pert, ctrl, method="asymptotic", use_continuity=False).pvalue
    np.testing.assert_allclose(pvals_adj, stats.false_discovery_control(p), rtol=1e-4)


def test_top_de_genes_and_overlap() -> None:
    pert, ctrl = _de_data()
    top = top_de_genes(pert, ctrl, n=5)
    assert sorted(top.tolist()) == [0, 1, 2, 3, 4]
    assert top[0] == 0
    assert de_overlap(pert, pert, ctrl) == 1.0
    null = np.random.default_rng(1).normal(2.0, 0.5, size=(50, 30))
    assert de_overlap(null, pert, ctrl) < 0.5
    assert np.isnan(de_overlap(pert, null, ctrl))  # no true DE gene


# --- distribution-level metrics ---------------------------------------------------------


def _brute_energy(X: np.ndarray, Y: np.ndarray) -> float:
    def mean_dist(A: np.ndarray, B: np.ndarray) -> float:
        return np.mean([np.linalg.norm(a - b) for a in A for b in B])

    return 2 * mean_dist(X, Y) - mean_dist(X, X) - mean_dist(Y, Y)


def test_energy_distance_brute_force_and_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(12, 3)), rng.normal(0.7, 1.3, size=(9, 3))
    assert energy_distance(X, Y) == pytest.approx(_brute_energy(X, Y), rel=1e-10)
    assert energy_distance(X, X) == pytest.approx(0.0, abs=1e-12)
    monkeypatch.setattr(distances_module, "_BLOCK_ENTRIES", 10)  # many small blocks
    assert energy_distance(X, Y) == pytest.approx(_brute_energy(X, Y), rel=1e-10)
    # scipy's 1-D energy distance is sqrt(2 E|X-Y| - E|X-X'| - E|Y-Y'|)
    u, v = rng.normal(size=40), rng.exponential(size=25)
    assert np.sqrt(energy_distance(u, v)) == pytest.approx(stats.energy_distance(u, v), rel=1e-10)


def test_energy_floor_is_the_expected_energy_of_independent_samples() -> None:
    # Two samples of one distribution: E[energy] = E|Y - Y'| (1/n + 1/m), not 0. For a
    # standard 2-D Gaussian, Y - Y' ~ N(0, 2I) and E|Y - Y'| = sqrt(pi) (Rayleigh mean).
    rng = np.random.default_rng(0)
    n, m = 30, 20
    closed_form = np.sqrt(np.pi) * (1 / n + 1 / m)
    energies, floors = [], []
    for _ in range(400):
        X, Y = rng.normal(size=(n, 2)), rng.normal(size=(m, 2))
        energies.append(energy_distance(X, Y))
        floors.append(energy_floor(n, Y))
    assert np.mean(energies) == pytest.approx(closed_form, rel=0.05)
    assert np.mean(floors) == pytest.approx(closed_form, rel=0.02)  # unbiased estimate of it
    # the floor is the mean distance over distinct pairs, times (1/n + 1/m)
    Y = rng.normal(size=(7, 3))
    distinct = np.mean([np.linalg.norm(a - b) for i, a in enumerate(Y) for j, b in enumerate(Y) if i != j])
    assert energy_floor(5, Y) == pytest.approx(distinct * (1 / 5 + 1 / 7), rel=1e-10)
    with pytest.raises(PerturbFlowError, match="energy floor"):
        energy_floor(5, Y[:1])


def test_mmd_rbf_brute_force() -> None:
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(10, 2)), rng.normal(0.5, 1.0, size=(7, 2))
    scales = (0.5, 1.0, 2.0)
    Z = np.vstack([X, Y])
    d2 = [np.sum((Z[i] - Z[j]) ** 2) for i in range(len(Z)) for j in range(i + 1, len(Z))]
    h = np.median(d2)

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return np.mean([np.exp(-np.sum((a - b) ** 2) / (s * h)) for s in scales])

    def mean_k(A: np.ndarray, B: np.ndarray) -> float:
        return np.mean([k(a, b) for a in A for b in B])

    expected = mean_k(X, X) + mean_k(Y, Y) - 2 * mean_k(X, Y)
    assert mmd_rbf(X, Y, scales=scales) == pytest.approx(expected, rel=1e-10)
    assert mmd_rbf(X, X) == pytest.approx(0.0, abs=1e-12)
    assert mmd_rbf(X, Y + 5.0, bandwidth=1.0) > mmd_rbf(X, Y, bandwidth=1.0) > 0


# --- cell-eval reference ----------------------------------------------------------------


def test_matches_cell_eval() -> None:
    """discrimination_score_l1 and pearson_delta give cell-eval's numbers on the same data."""
    ce_metrics = pytest.importorskip("cell_eval.metrics")
    from cell_eval._types import PerturbationAnndataPair

    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(25)]
    perts = ["g1", "g3", "g4", "g7", "g9", "other"]  # single-gene labels, one not a gene
    shift = {p: rng.normal(0, 0.5, size=25) for p in perts}
    real_blocks, pred_blocks, real_obs, pred_obs = [], [], [], []
    ctrl = rng.normal(2, 0.3, size=(30, 25))
    for p in perts:
        real_blocks.append(rng.normal(2, 0.3, size=(20, 25)) + shift[p])
        pred_blocks.append(rng.normal(2, 0.3, size=(15, 25)) + shift[p] + rng.normal(0, 1.2, 25))
        real_obs += [p] * 20
        pred_obs += [p] * 15
    ctrl_pred = rng.normal(2.1, 0.3, size=(30, 25))

    def make(blocks: list[np.ndarray], labels: list[str], control: np.ndarray) -> ad.AnnData:
        obs = pd.DataFrame({"perturbation": labels + ["control"] * len(control)})
        obs.index = obs.index.astype(str)
        return ad.AnnData(np.vstack([*blocks, control]), obs=obs, var=pd.DataFrame(index=genes))

    real = make(real_blocks, real_obs, ctrl)
    for pred_ctrl in (ctrl, ctrl_pred):  # the real controls, as we use it, and separate ones
        pred = make(pred_blocks, pred_obs, pred_ctrl)
        pair = PerturbationAnndataPair(real=real, pred=pred, pert_col="perturbation",
                                       control_pert="control")
        expected = ce_metrics.discrimination_score(pair, metric="l1", exclude_target_gene=True)

        def means(a: ad.AnnData) -> dict[str, np.ndarray]:
            return {p: a.X[(a.obs["perturbation"] == p).to_numpy()].mean(0) for p in perts}

        exclude = {p: [genes.index(p)] for p in perts if p in genes}
        ours = discrimination_score_l1(
            means(pred), means(real), pred_ref=pred_ctrl.mean(0), real_ref=ctrl.mean(0),
            exclude=exclude,
        )
        assert ours == pytest.approx(expected, abs=1e-12)
    assert min(ours.values()) < 1.0  # the noisy predictions are not all perfect

    pred = make(pred_blocks, pred_obs, ctrl)
    pair = PerturbationAnndataPair(real=real, pred=pred, pert_col="perturbation",
                                   control_pert="control")
    expected = ce_metrics.pearson_delta(pair)
    pm, rm = {p: pred.X[pred.obs["perturbation"] == p].mean(0) for p in perts}, {
        p: real.X[real.obs["perturbation"] == p].mean(0) for p in perts
    }
    for p in perts:
        assert pearson_delta(pm[p], rm[p], ctrl.mean(0)) == pytest.approx(expected[p], abs=1e-10)


# --- evaluate_predictions ---------------------------------------------------------------


def test_evaluate_perfect_prediction(small: ad.AnnData) -> None:
    table = evaluate_predictions(small, small, "perturbation", "control", context_keys="cell_type")
    n_groups = small.obs.groupby(["perturbation", "cell_type"], observed=True).ngroups
    assert len(table) == n_groups - 2  # all but the two control groups
    assert list(table.columns[:4]) == ["perturbation", "context", "n_pred", "n_real"]
    assert set(table["context"]) == {"type0", "type1"}
    for col in ["pearson_delta", "pearson_delta_top20", "pearson_delta_systema",
                "discrimination_l1", "de_overlap"]:
        np.testing.assert_allclose(table[col], 1.0, atol=1e-6)
    for col in ["mse_top20", "mae_top20", "energy_distance", "mmd"]:
        np.testing.assert_allclose(table[col], 0.0, atol=1e-6)
    assert (table["n_pred"] == table["n_real"]).all()


def test_evaluate_control_prediction_and_gene_order(small: ad.AnnData) -> None:
    test = small[small.obs["split"].eq("test") | small.obs["perturbation"].eq("control")].copy()
    ctrl = small[small.obs["perturbation"] == "control"].copy()
    pred = get_baseline("control")().fit(small, "perturbation", "control", "cell_type").predict(
        ctrl, ["G0", *small.uns["synthetic"]["heldout_combos"]]
    )
    pred = pred[:, pred.var_names[::-1]].copy()  # reversed gene order is realigned
    table = evaluate_predictions(pred, test, "perturbation", "control", context_keys="cell_type")
    assert len(table) == 2  # G0 is not in the real subset
    # the prediction equals the real controls up to float32 rounding: no delta to correlate
    assert table["pearson_delta"].abs().max() < 0.2
    assert (table["energy_distance"] > 0.5).all()
    assert (table["energy_floor"] > 0).all() and (table["energy_floor"] < table["energy_distance"]).all()
    perfect = evaluate_predictions(test, test, "perturbation", "control", "cell_type")
    assert (table["mse_top20"].to_numpy() > perfect["mse_top20"].to_numpy() + 0.1).all()


def test_evaluate_matches_labels_and_checks_genes(small: ad.AnnData) -> None:
    combo = small.uns["synthetic"]["heldout_combos"][0]
    real = small[small.obs["perturbation"].isin([combo, "control"])].copy()
    pred = real[real.obs["perturbation"] == combo].copy()
    a, b = combo.split("+")
    pred.obs["perturbation"] = f"{b}+{a}"  # same perturbation, other spelling
    table = evaluate_predictions(pred, real, "perturbation", "control", "cell_type")
    assert table["perturbation"].unique().tolist() == [combo]
    assert table["pearson_delta"].min() > 0.999
    with pytest.raises(PerturbFlowError, match="3 real genes missing"):
        evaluate_predictions(pred[:, 3:].copy(), real, "perturbation", "control", "cell_type")
    with pytest.raises(PerturbFlowError, match="'donor' not found"):
        evaluate_predictions(pred, real, "perturbation", "control", "donor")


def test_summarize_per_model() -> None:
    table = pd.DataFrame(
        {"perturbation": ["A", "B", "A", "B"], "context": "all", "n_pred": 5, "n_real": 5,
         "pearson_delta": [0.2, 0.4, 0.9, np.nan], "model": ["m1", "m1", "m2", "m2"]}
    )
    out = summarize(table)
    assert out.loc["m1", "pearson_delta"] == pytest.approx(0.3)
    assert out.loc["m2", "pearson_delta"] == pytest.approx(0.9)
    assert out.loc["m2", "n_groups"] == 2
    assert summarize(table.drop(columns="model")).loc["all", "pearson_delta"] == pytest.approx(0.5)


# --- real data --------------------------------------------------------------------------


@pytest.mark.skipif(not DEVEL.exists(), reason=f"real test data not found at {DEVEL}")
def test_real_data_ceiling_and_baselines() -> None:
    """Norman 2019 K562: the real-vs-real ceiling and the additive model beat the control."""
    adata = ad.read_h5ad(DEVEL)
    singles, combos = ["KLF1", "MAP2K6", "TGFBR2", "MAPK1"], ["KLF1+MAP2K6", "MAPK1+TGFBR2"]
    keep = adata.obs["counts_recovered_exact"].astype(bool) & (adata.obs["cell_type"] == "k562")
    adata = adata[keep & adata.obs["perturbation"].isin(["control", *singles, *combos])].copy()
    half_pred, half_real = noise_ceiling_split(adata, "perturbation", "control", seed=0)
    kw = {"perturbation_key": "perturbation", "control_value": "control", "context_keys": "cell_type",
              "real_layer": "counts"}
    ceiling = evaluate_predictions(half_pred, half_real, pred_layer="counts", **kw)
    assert len(ceiling) == len(singles) + len(combos)
    assert ceiling["pearson_delta_top20"].mean() > 0.8
    assert ceiling["discrimination_l1"].mean() > 0.8

    train = half_pred[~half_pred.obs["perturbation"].isin(combos)]
    ctrl = half_real[half_real.obs["perturbation"] == "control"]
    scores = {}
    for name in ["control", "additive"]:
        model = get_baseline(name)().fit(train, "perturbation", "control", "cell_type",
                                         layer="counts")
        pred = model.predict(ctrl, combos, layer="counts")
        scores[name] = evaluate_predictions(pred, half_real, **kw).set_index("perturbation")
    assert (scores["additive"]["pearson_delta_top20"] > 0.5).all()
    assert (scores["additive"]["mse_top20"] < scores["control"]["mse_top20"]).all()
    ceiling = ceiling.set_index("perturbation").loc[combos]
    assert (ceiling["energy_distance"] < scores["control"]["energy_distance"]).all()


# --- held-out NB log-likelihood -------------------------------------------------------


def test_nb_loglik_matches_scipy() -> None:
    from perturbflow.metrics._likelihood import nb_log_likelihood, predicted_profile

    rng = np.random.default_rng(0)
    x = rng.poisson(3.0, size=(6, 4))
    profile, theta = np.array([0.1, 0.2, 0.3, 0.4]), np.array([1.0, 2.0, 5.0, 0.5])
    mu = x.sum(1, keepdims=True) * profile
    expected = stats.nbinom.logpmf(x, theta, theta / (theta + mu)).sum(1).mean()
    assert nb_log_likelihood(x, profile, theta) == pytest.approx(expected, rel=1e-7)
    assert nb_log_likelihood(sp.csr_matrix(x), profile, theta) == pytest.approx(expected, rel=1e-7)
    pred = np.array([[1, 1, 2, 0], [0, 2, 2, 4]])  # normalised rows: [.25 .25 .5 0], [0 .25 .25 .5]
    assert np.allclose(predicted_profile(pred), [0.125, 0.25, 0.375, 0.25], atol=1e-7)


def test_evaluate_scores_likelihood_only_with_a_dispersion(small: ad.AnnData) -> None:
    pred = small.copy()
    plain = evaluate_predictions(pred, small, "perturbation", "control", context_keys="cell_type")
    assert plain["nb_loglik"].isna().all()
    pred.var["nb_dispersion"] = 5.0
    table = evaluate_predictions(pred, small, "perturbation", "control", context_keys="cell_type")
    assert np.isfinite(table["nb_loglik"]).all() and (table["nb_loglik"] < 0).all()
    wrong = pred.copy()
    wrong.X = pred.X[:, np.random.default_rng(0).permutation(pred.n_vars)]  # genes' profiles swapped
    worse = evaluate_predictions(wrong, small, "perturbation", "control", context_keys="cell_type")
    assert (worse["nb_loglik"] < table["nb_loglik"]).all()
