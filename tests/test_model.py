"""PerturbFlow's contract: training, prediction output, latents, save and load."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import perturbflow as pf
from perturbflow import PerturbFlowError
from perturbflow.data import mean_exact_shift
from perturbflow.train import FEW_CONTEXTS_FRACTION, MIN_CONTEXTS
from tests.conftest import is_integer_matrix


def test_predict_output_contract(trained_model, controls, synthetic_adata):
    held_out = synthetic_adata.uns["synthetic"]["heldout_combos"]
    pred = trained_model.predict(controls, perturbations=held_out, seed=1)
    assert pred.n_obs == len(held_out) * controls.n_obs
    assert list(pred.var_names) == list(synthetic_adata.var_names)
    assert is_integer_matrix(pred.X) and pred.X.dtype.kind == "i"
    assert pred.layers["expected"].shape == pred.shape and np.all(pred.layers["expected"] >= 0)
    assert sorted(pred.obs["perturbation"].unique()) == sorted(held_out)
    assert (pred.obs["cell_type"].to_numpy() == controls.obs.loc[pred.obs["source_cell"], "cell_type"].to_numpy()).all()
    assert pred.obsm["X_perturbflow"].shape == (pred.n_obs, 8)


def test_prediction_records_the_share_of_each_carried_effect_kept(trained_model, controls):
    pred = trained_model.predict(controls, perturbations=["G0"], seed=0)
    kept = pred.uns["perturbflow_prediction"]["specificity"]
    assert kept and all(0.0 <= share <= 1.0 for shares in kept.values() for share in shares.values())
    context, shares = next(iter(kept.items()))
    ctrl_mean = pf.data.log_normalized_mean(controls[(controls.obs["cell_type"] == context).to_numpy()].X)
    assert shares["G0"] == pytest.approx(trained_model.prior.specificity(frozenset(["G0"]), context, ctrl_mean), abs=1e-4)


def test_predict_is_seeded_and_n_cells(trained_model, controls):
    a = trained_model.predict(controls, perturbations=["G0"], seed=5, n_cells=30)
    b = trained_model.predict(controls, perturbations=["G0"], seed=5, n_cells=30)
    assert a.n_obs == 30 and (a.X != b.X).nnz == 0


def test_predict_uses_only_control_cells(trained_model, synthetic_adata, controls):
    pred = trained_model.predict(synthetic_adata, perturbations=["G1"], seed=0)
    assert pred.n_obs == controls.n_obs


def test_gears_label_and_order_are_the_same_perturbation(trained_model, controls):
    a = trained_model.predict(controls, perturbations=["G1+G0"], seed=2)
    b = trained_model.predict(controls, perturbations=["G0+G1"], seed=2)
    assert np.allclose(a.layers["expected"], b.layers["expected"], rtol=1e-4, atol=1e-4)


def test_unknown_perturbation_is_named(trained_model, controls):
    with pytest.raises(PerturbFlowError, match="unknown perturbation 'G0\\+TP53': TP53"):
        trained_model.predict(controls, perturbations=["G0+TP53"])


def test_genes_must_match(trained_model, controls):
    with pytest.raises(PerturbFlowError, match="genes differ"):
        trained_model.predict(controls[:, 5:], perturbations=["G0"])
    reordered = controls[:, controls.var_names[::-1]]  # same genes, other order: realigned
    pred = trained_model.predict(reordered, perturbations=["G0"], seed=0)
    assert list(pred.var_names) == trained_model.genes


def test_latent_representation(trained_model, synthetic_adata):
    z = trained_model.get_latent_representation()
    assert z.shape == (synthetic_adata.n_obs, 8) and np.isfinite(z).all()


def test_save_load_round_trip(trained_model, controls, tmp_path):
    trained_model.save(tmp_path / "model")
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"perturbflow.json", "flow.pt", "vae"} <= files
    loaded = pf.PerturbFlow.load(tmp_path / "model")
    assert loaded.decoding_scores == trained_model.decoding_scores
    a = trained_model.predict(controls, perturbations=["G0+G1"], seed=3)
    b = loaded.predict(controls, perturbations=["G0+G1"], seed=3)
    assert np.allclose(a.layers["expected"], b.layers["expected"], rtol=1e-5, atol=1e-5)
    assert (a.X != b.X).nnz == 0
    with pytest.raises(PerturbFlowError, match="already exists"):
        trained_model.save(tmp_path / "model")
    with pytest.raises(PerturbFlowError, match="genes differ"):
        pf.PerturbFlow.load(tmp_path / "model", adata=controls[:, 3:])


def test_load_missing_folder(tmp_path):
    with pytest.raises(PerturbFlowError, match="does not exist"):
        pf.PerturbFlow.load(tmp_path / "nope")


def test_unknown_backbone_and_argument(synthetic_adata):
    with pytest.raises(PerturbFlowError, match="known backbones: .*mlp"):
        pf.PerturbFlow(synthetic_adata, backbone="unet")
    with pytest.raises(PerturbFlowError, match="unknown PerturbFlow arguments: n_latnt"):
        pf.PerturbFlow(synthetic_adata, n_latnt=4)


def test_not_set_up():
    with pytest.raises(PerturbFlowError, match="not set up"):
        pf.PerturbFlow(pf.datasets.synthetic(n_genes=20, n_atoms=3, n_combos=2, n_cells_per_group=5, n_control_cells=10))


def test_flow_correction_in_seen_and_new_contexts(trained_model, controls):
    def predict(scale, flow_contexts, new_context_flow="shape", condition="null"):
        config = trained_model.config
        saved = trained_model.correction_scale, trained_model.flow_contexts, config.new_context_flow
        trained_model.correction_scale, trained_model.flow_contexts = scale, flow_contexts
        config.new_context_flow, config.new_context_condition = new_context_flow, condition
        saved_exact, config.exact_mean = config.exact_mean, True  # alike everywhere
        try:
            return trained_model.predict(controls, perturbations=["G0"], seed=0)
        finally:
            trained_model.correction_scale, trained_model.flow_contexts, config.new_context_flow = saved
            config.exact_mean, config.new_context_condition = saved_exact, "null"

    fitted = list(trained_model.flow_contexts)
    assert fitted, "the synthetic data has perturbed cells in its contexts"
    corrected, prior_only = predict(1.0, fitted), predict(0.0, fitted)
    assert not np.allclose(corrected.layers["expected"], prior_only.layers["expected"])
    # every context new to the flow: "off" is the prior's move alone
    off = predict(1.0, [], new_context_flow="off")
    assert np.allclose(off.layers["expected"], prior_only.layers["expected"])
    # "shape": the flow moves each cell, but every context's mean latent move is the prior's;
    # "mean": every cell moves by the prior plus the same mean correction; together, "full"
    shape, mean = predict(0.0, [], new_context_flow="shape"), predict(0.0, [], new_context_flow="mean")
    full = predict(0.0, [], new_context_flow="full")
    assert not np.allclose(shape.layers["expected"], prior_only.layers["expected"])
    z_prior = prior_only.obsm["X_perturbflow"]
    for c in pd.unique(controls.obs["cell_type"]):
        cells = (shape.obs["cell_type"] == c).to_numpy()
        np.testing.assert_allclose(shape.obsm["X_perturbflow"][cells].mean(0), z_prior[cells].mean(0), atol=1e-4)
        move = mean.obsm["X_perturbflow"][cells] - z_prior[cells]  # (n, D), one row repeated
        np.testing.assert_allclose(move, np.broadcast_to(move[0], move.shape), atol=1e-5)
    np.testing.assert_allclose(shape.obsm["X_perturbflow"] + mean.obsm["X_perturbflow"] - z_prior,
                               full.obsm["X_perturbflow"], atol=1e-4)
    # under its own control latents' statistics a new context is transported as a measured
    # one is; under the null context, differently
    own = predict(0.0, [], new_context_flow="full", condition="own")
    np.testing.assert_allclose(own.obsm["X_perturbflow"], corrected.obsm["X_perturbflow"], atol=1e-5)
    assert not np.allclose(full.obsm["X_perturbflow"], own.obsm["X_perturbflow"])
    assert own.uns["perturbflow_prediction"]["new_context_condition"] == "own"
    # what was applied is recorded with the prediction, per context
    info = corrected.uns["perturbflow_prediction"]
    assert info["flow_correction"] == {c: 1.0 for c in fitted}
    assert set(info["flow_correction_part"].values()) == {"all"}
    assert set(off.uns["perturbflow_prediction"]["flow_correction"].values()) == {0.0}
    assert set(shape.uns["perturbflow_prediction"]["flow_correction"].values()) == {1.0}
    assert set(shape.uns["perturbflow_prediction"]["flow_correction_part"].values()) == {"shape"}
    assert set(mean.uns["perturbflow_prediction"]["flow_correction_part"].values()) == {"mean"}
    # "auto" with fewer than MIN_CONTEXTS measured contexts: the shape at FEW_CONTEXTS_FRACTION,
    # unless new_context_fraction says another share
    assert len(trained_model.measured_contexts) < MIN_CONTEXTS
    auto = predict(0.0, [], new_context_flow="auto")
    np.testing.assert_allclose(auto.obsm["X_perturbflow"] - z_prior,
                               FEW_CONTEXTS_FRACTION * (shape.obsm["X_perturbflow"] - z_prior), atol=1e-4)
    assert set(auto.uns["perturbflow_prediction"]["flow_correction"].values()) == {FEW_CONTEXTS_FRACTION}
    assert set(auto.uns["perturbflow_prediction"]["flow_correction_part"].values()) == {"shape"}
    trained_model.config.new_context_fraction = 0.25
    try:
        quarter = predict(0.0, [], new_context_flow="auto")
    finally:
        trained_model.config.new_context_fraction = None
    np.testing.assert_allclose(quarter.obsm["X_perturbflow"] - z_prior,
                               0.25 * (shape.obsm["X_perturbflow"] - z_prior), atol=1e-4)


def _without_correction(model, controls, perturbation="G0", **config):
    """``model``'s prediction with the flow's correction off and ``config`` set for it."""
    saved = model.correction_scale, {k: getattr(model.config, k) for k in config}
    model.correction_scale = 0.0
    for k, v in config.items():
        setattr(model.config, k, v)
    try:
        return model.predict(controls, perturbations=[perturbation], seed=0)
    finally:
        model.correction_scale = saved[0]
        for k, v in saved[1].items():
            setattr(model.config, k, v)


def _log_expression(counts, rows, expected=None):
    """log1p-normalised source cells ``counts[rows]`` (or ``expected`` at their libraries)."""
    scale = 1e4 / counts[rows].sum(1, keepdims=True)
    return np.log1p((counts[rows] if expected is None else expected) * scale)


@pytest.mark.parametrize("exact_mean", [False, True])
def test_prediction_moves_each_cell_by_its_own_decoded_change(trained_model, controls, exact_mean):
    """With the flow's correction off, each cell moves by the decoder's change from its own
    latent to latent + prior, plus the gene-space residual the latent does not carry; with
    ``exact_mean`` each group (here: a cell type) also moves by the per-gene shift that keeps
    its mean, after clipping at 0, where those moves add up to."""
    pred = _without_correction(trained_model, controls, exact_mean=exact_mean, exact_mean_by="shift")
    counts = controls.X.toarray() if hasattr(controls.X, "toarray") else np.asarray(controls.X)
    src = controls.obs_names.get_indexer(pred.obs["source_cell"])
    library = counts[src].sum(1)
    z0 = trained_model.get_latent_representation(controls)[src]
    z1 = pred.obsm["X_perturbflow"]
    contexts = pred.obs["cell_type"].to_numpy()
    residual = np.stack([trained_model.residual_prior.prior(frozenset(["G0"]), c) for c in contexts])
    moved = _log_expression(counts, src) + trained_model.vae.log_change(z0, z1, library) + residual
    lifted = 0.0
    for c in np.unique(contexts):
        rows = contexts == c
        if exact_mean:
            moved[rows] += mean_exact_shift(moved[rows], np.zeros(moved.shape[1]))
        else:
            lifted = max(lifted, np.abs(np.maximum(moved[rows], 0).mean(0) - np.maximum(moved[rows].mean(0), 0)).max())
    scale = 1e4 / library[:, None]
    np.testing.assert_allclose(pred.layers["expected"], np.expm1(np.maximum(moved, 0)) / scale, rtol=1e-4, atol=1e-4)
    recorded = pred.uns["perturbflow_prediction"]["exact_mean"]
    assert set(recorded) == set(contexts) and all(v is exact_mean for v in recorded.values())
    if not exact_mean:  # clipping at 0 lifts the mean of some falling gene
        assert lifted > 1e-3
    # the cells' changes differ: the decoder's response depends on each cell's state
    assert np.std(trained_model.vae.log_change(z0, z1, library), axis=0).max() > 1e-3


@pytest.mark.parametrize("by", ["shift", "zeroing", "thinning"])
def test_exact_mean_puts_each_groups_mean_where_the_moves_add_up(trained_model, controls, by):
    """Clipping at 0 lifts a falling gene's mean; the exact mean puts it back: exactly with
    one shift per gene; by zeroing (its lowest cells set to 0) to within a cell, or in
    expectation by thinning (cells set to 0 at random); the other cells keep their moves."""
    exact = _without_correction(trained_model, controls, exact_mean=True, exact_mean_by=by)
    clipped = _without_correction(trained_model, controls, exact_mean=False)
    counts = controls.X.toarray() if hasattr(controls.X, "toarray") else np.asarray(controls.X)
    src = controls.obs_names.get_indexer(exact.obs["source_cell"])
    contexts = exact.obs["cell_type"].to_numpy()
    z0 = trained_model.get_latent_representation(controls)[src]
    for c in np.unique(contexts):
        rows = contexts == c
        residual = trained_model.residual_prior.prior(frozenset(["G0"]), c)
        change = trained_model.vae.log_change(z0[rows], exact.obsm["X_perturbflow"][rows]) + residual
        target = np.maximum((_log_expression(counts, src[rows]) + change).mean(0), 0)
        got = _log_expression(counts, src[rows], exact.layers["expected"][rows]).mean(0)
        lifted = _log_expression(counts, src[rows], clipped.layers["expected"][rows]).mean(0)
        assert np.all(lifted >= target - 1e-5) and (lifted - target).max() > 1e-3
        if by == "shift":
            np.testing.assert_allclose(got, target, atol=1e-4)
            continue
        kept = exact.layers["expected"][rows]
        same = np.isclose(kept, clipped.layers["expected"][rows], rtol=1e-4, atol=1e-4)
        assert np.all(same | (kept == 0)) and not same.all()  # cells set to 0, the others untouched
        falling = lifted - target > min(0.05, 0.5 * (lifted - target).max())  # the genes clipping lifted most
        if by == "zeroing":  # the lowest cells, and the mean within a cell's share of the target
            moved_before = _log_expression(counts, src[rows], clipped.layers["expected"][rows])
            for g in np.flatnonzero(~same.all(0)):
                assert moved_before[~same[:, g], g].max() <= moved_before[same[:, g] & (kept[:, g] > 0), g].min() + 1e-5
            assert np.all(np.abs(got - target) <= moved_before.max(0) / rows.sum() + 1e-4)
            continue
        # exact in expectation: far nearer the target than the lifted mean, and not biased
        assert np.abs(got - target)[falling].mean() < 0.5 * (lifted - target)[falling].mean()
        assert abs((got - target)[falling].mean()) < 0.25 * (lifted - target)[falling].mean()


def test_exact_mean_takes_true_false_auto_or_a_share():
    for value in (True, False, "auto", 0.0, 0.5, 1):
        assert pf.PerturbFlowConfig(exact_mean=value).exact_mean == value
    for value in (1.5, -0.1, "half"):
        with pytest.raises(PerturbFlowError, match="exact_mean"):
            pf.PerturbFlowConfig(exact_mean=value)


def test_new_context_fraction_takes_none_or_a_share():
    for value in (None, 0, 0.5, 1.0):
        assert pf.PerturbFlowConfig(new_context_fraction=value).new_context_fraction == value
    for value in (-0.5, "half", True):
        with pytest.raises(PerturbFlowError, match="new_context_fraction"):
            pf.PerturbFlowConfig(new_context_fraction=value)


@pytest.mark.parametrize("by", ["shift", "zeroing"])
def test_a_share_of_the_exact_mean_puts_back_that_share_of_the_lift(trained_model, controls, by):
    """``exact_mean=0.5``: each group's mean halfway between the clipped mean and the mean of
    the moves (exactly with a shift, to within a cell by zeroing), and the prediction records
    the share."""
    half = _without_correction(trained_model, controls, exact_mean=0.5, exact_mean_by=by)
    whole = _without_correction(trained_model, controls, exact_mean=True, exact_mean_by=by)
    clipped = _without_correction(trained_model, controls, exact_mean=False)
    assert set(half.uns["perturbflow_prediction"]["exact_mean"].values()) == {0.5}
    counts = controls.X.toarray() if hasattr(controls.X, "toarray") else np.asarray(controls.X)
    src = controls.obs_names.get_indexer(half.obs["source_cell"])
    for c in np.unique(half.obs["cell_type"]):
        rows = (half.obs["cell_type"] == c).to_numpy()
        means = [_log_expression(counts, src[rows], p.layers["expected"][rows]).mean(0) for p in (half, whole, clipped)]
        got, target, lifted = means
        assert (lifted - target).max() > 1e-3
        cell = _log_expression(counts, src[rows], clipped.layers["expected"][rows]).max(0) / rows.sum()
        step = 1e-4 if by == "shift" else 1e-4 + 2 * cell  # within a cell of half, the whole within a cell
        assert np.all(np.abs(got - (lifted + target) / 2) <= step)


def test_exact_mean_is_applied_per_context(trained_model, controls):
    """Each context's groups are decoded with or without the exact mean as
    ``exact_mean_in`` says for that context, and the prediction records it."""
    exact = _without_correction(trained_model, controls, exact_mean=True)
    clipped = _without_correction(trained_model, controls, exact_mean=False)
    contexts = exact.obs["cell_type"].to_numpy()
    first = min(set(contexts))
    trained_model.exact_mean_in = lambda context: context == first
    try:
        mixed = _without_correction(trained_model, controls)
    finally:
        del trained_model.exact_mean_in
    rows = contexts == first
    assert 0 < rows.sum() < len(rows)
    np.testing.assert_allclose(mixed.layers["expected"][rows], exact.layers["expected"][rows], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mixed.layers["expected"][~rows], clipped.layers["expected"][~rows], rtol=1e-5, atol=1e-5)
    assert mixed.uns["perturbflow_prediction"]["exact_mean"] == {c: c == first for c in set(contexts)}


def test_exact_mean_auto_fits_a_new_contexts_share_on_the_measured_ones(trained_model, controls):
    """``exact_mean="auto"``: a context the flow was fitted in keeps the exact mean; a new one
    puts back the share of clipping's lift fitted on the measured contexts' real group means
    (``decoding_scores``' sums, from training; see tests/test_new_context.py), and decodes as
    that share does."""
    contexts = sorted(trained_model.flow_contexts)
    saved = trained_model.flow_contexts, trained_model.decoding_scores, trained_model.config.exact_mean
    try:
        trained_model.config.exact_mean = "auto"
        # the first context's real means lie 0.2 of the way from clipped to exact, the others' all the way
        trained_model.decoding_scores = {
            c: {"exact": 1.0, "clipped": 1.0, "lift_fit": 0.2 if c == contexts[0] else 1.0, "lift_squared": 1.0}
            for c in contexts
        }
        assert all(trained_model.exact_mean_in(c) is True for c in contexts)  # contexts the flow was fitted in
        trained_model.flow_contexts = []  # every context new to the flow
        for c in contexts:
            others = [o for o in contexts if o != c]
            expected = sum(0.2 if o == contexts[0] else 1.0 for o in others) / len(others)
            assert trained_model.exact_mean_in(c) == pytest.approx(expected)
        pred = _without_correction(trained_model, controls)
        recorded = pred.uns["perturbflow_prediction"]["exact_mean"]
        assert recorded == {c: pytest.approx(trained_model.exact_mean_in(c)) for c in contexts}
        first = (pred.obs["cell_type"] == contexts[1]).to_numpy()  # fitted on the others, the first among them
        share = trained_model.exact_mean_in(contexts[1])
        assert 0 < share < 1
        fixed = _without_correction(trained_model, controls, exact_mean=share)
        np.testing.assert_allclose(pred.layers["expected"][first], fixed.layers["expected"][first], rtol=1e-5, atol=1e-5)
    finally:
        trained_model.flow_contexts, trained_model.decoding_scores, trained_model.config.exact_mean = saved


def test_exact_mean_auto_of_a_model_saved_before_the_fit_takes_the_better_decoding(trained_model, controls):
    """Scores without the fit's sums (a model saved before session 16): a new context takes the
    decoding that predicted the measured contexts better, averaged over them, as then."""
    contexts = sorted(trained_model.flow_contexts)
    assert len(contexts) >= 2, "the synthetic data has perturbed cells in its contexts"
    saved = trained_model.flow_contexts, trained_model.decoding_scores, trained_model.config.exact_mean
    try:
        trained_model.config.exact_mean = "auto"
        # the first context was predicted best clipped, every other one best exact
        trained_model.decoding_scores = {c: {"exact": 1.0 + (c == contexts[0]), "clipped": 1.5} for c in contexts}
        assert all(trained_model.exact_mean_in(c) for c in contexts)  # contexts the flow was fitted in
        trained_model.flow_contexts = []  # every context new to the flow
        for c in contexts:
            others = [trained_model.decoding_scores[o] for o in contexts if o != c]
            expected = np.mean([s["exact"] for s in others]) <= np.mean([s["clipped"] for s in others])
            assert trained_model.exact_mean_in(c) is bool(expected)
        assert trained_model.exact_mean_in(contexts[0])  # every other context predicted best exact
        # where clipping predicted every measured context better, a new context is clipped
        trained_model.decoding_scores = {c: {"exact": 2.0, "clipped": 1.0} for c in contexts}
        pred = _without_correction(trained_model, controls)
        assert set(pred.uns["perturbflow_prediction"]["exact_mean"].values()) == {False}
        clipped = _without_correction(trained_model, controls, exact_mean=False)
        np.testing.assert_allclose(pred.layers["expected"], clipped.layers["expected"], rtol=1e-5, atol=1e-5)
        trained_model.decoding_scores = {}  # nothing measured: exact
        assert all(trained_model.exact_mean_in(c) for c in contexts)
    finally:
        trained_model.flow_contexts, trained_model.decoding_scores, trained_model.config.exact_mean = saved


def test_prior_mean_gives_each_group_the_gene_space_mean_change(trained_model, controls):
    """``gene_offset="prior_mean"``: the group's mean change is the gene-space baseline's,
    each cell's deviation from it the decoder's."""
    pred = _without_correction(trained_model, controls, gene_offset="prior_mean", exact_mean_by="shift")
    counts = controls.X.toarray() if hasattr(controls.X, "toarray") else np.asarray(controls.X)
    src = controls.obs_names.get_indexer(pred.obs["source_cell"])
    contexts = pred.obs["cell_type"].to_numpy()
    for c in np.unique(contexts):
        rows = contexts == c
        before = _log_expression(counts, src[rows]).mean(0)
        after = _log_expression(counts, src[rows], pred.layers["expected"][rows]).mean(0)
        expected = np.maximum(before + trained_model.gene_prior.prior(frozenset(["G0"]), c), 0)
        np.testing.assert_allclose(after, expected, atol=1e-4)
    moved = _log_expression(counts, src, pred.layers["expected"]) - _log_expression(counts, src)
    assert np.std(moved[contexts == contexts[0]], axis=0).max() > 1e-3  # cells do not move alike


def test_cell_response_zero_moves_every_cell_of_a_group_alike(trained_model, controls):
    pred = _without_correction(trained_model, controls, cell_response=0.0)
    counts = controls.X.toarray() if hasattr(controls.X, "toarray") else np.asarray(controls.X)
    src = controls.obs_names.get_indexer(pred.obs["source_cell"])
    scale = 1e4 / counts[src].sum(1, keepdims=True)
    moved = np.log1p(pred.layers["expected"] * scale) - np.log1p(counts[src] * scale)
    for c in pred.obs["cell_type"].unique():
        rows = (pred.obs["cell_type"] == c).to_numpy()
        unclipped = pred.layers["expected"][rows] > 0  # clipping at zero is the only difference
        spread = [np.ptp(moved[rows][unclipped[:, g], g]) for g in range(moved.shape[1]) if unclipped[:, g].sum() > 1]
        assert max(spread) < 1e-4


def test_latent_shift_is_scgen_arithmetic_with_the_model_vae(trained_model, controls):
    pred = trained_model.predict(controls, perturbations=["G0"], seed=0, method="latent_shift")
    src = controls.obs_names.get_indexer(pred.obs["source_cell"])
    z0 = trained_model.get_latent_representation(controls)[src]
    contexts = pred.obs["cell_type"].to_numpy()
    shifts = trained_model.prior.shifts
    for c in set(contexts):  # the plain mean of G0's latent shift over the other contexts
        others = [v for (a, k), v in shifts.items() if a == frozenset(["G0"]) and k != c]
        rows = contexts == c
        np.testing.assert_allclose(pred.obsm["X_perturbflow"][rows], z0[rows] + np.mean(others, 0), atol=1e-5)
    assert is_integer_matrix(pred.X) and pred.uns["perturbflow_prediction"]["method"] == "latent_shift"
    with pytest.raises(PerturbFlowError, match="unknown method"):
        trained_model.predict(controls, perturbations=["G0"], method="scgen")


def test_without_a_baseline_prior_the_flow_is_applied_in_every_context(trained_model):
    config = trained_model.config
    saved = config.residual_prior, trained_model.flow_contexts, config.new_context_flow
    try:
        trained_model.flow_contexts, config.new_context_flow = [], "off"
        assert trained_model.correction_scale_in("a new cell type") == 0.0
        config.residual_prior = False  # the flow alone predicts: nothing to fall back to
        assert trained_model.correction_scale_in("a new cell type") == trained_model.correction_scale
    finally:
        config.residual_prior, trained_model.flow_contexts, config.new_context_flow = saved


def test_training_is_reproducible_with_a_seed(trained_model, synthetic_adata, controls):
    # the same arguments as the trained_model fixture: the same VAE, flow and calibration
    again = pf.PerturbFlow(synthetic_adata, n_latent=8, flow_steps_per_epoch=20)
    again.train(max_epochs=15, progress_bar=False)
    np.testing.assert_array_equal(again.get_latent_representation(), trained_model.get_latent_representation())
    for name, weights in trained_model.flow.state_dict().items():
        assert torch.equal(again.flow.state_dict()[name], weights), name
    assert again.correction_scale == trained_model.correction_scale
    other = pf.PerturbFlow(synthetic_adata, n_latent=8, flow_steps_per_epoch=20)
    other.train(max_epochs=15, progress_bar=False, seed=1)
    assert not np.allclose(other.get_latent_representation(), trained_model.get_latent_representation())


def test_linear_decoder_trains_saves_and_loads(synthetic_adata, controls, tmp_path):
    """``vae_decoder="linear"`` is scvi-tools' LinearSCVI, and a saved model reloads as one."""
    import scvi

    model = pf.PerturbFlow(synthetic_adata, n_latent=6, vae_decoder="linear", flow_steps_per_epoch=5)
    model.train(max_epochs=3, progress_bar=False)
    assert isinstance(model.vae.scvi_model, scvi.model.LinearSCVI)
    model.save(tmp_path / "linear")
    loaded = pf.PerturbFlow.load(tmp_path / "linear")
    assert isinstance(loaded.vae.scvi_model, scvi.model.LinearSCVI)
    a = model.predict(controls, perturbations=["G0"], seed=3)
    b = loaded.predict(controls, perturbations=["G0"], seed=3)
    assert np.allclose(a.layers["expected"], b.layers["expected"], rtol=1e-4, atol=1e-4)
    with pytest.raises(PerturbFlowError, match="vae_decoder"):
        pf.PerturbFlow(synthetic_adata, vae_decoder="quadratic")
