"""The scanpy-style functions: what each writes where, and that every plot draws something."""

from __future__ import annotations

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import perturbflow as pf
from perturbflow import PerturbFlowError


def assert_png_not_blank(path) -> None:
    assert path.is_file() and path.stat().st_size > 0, f"{path} was not written"
    image = mpimg.imread(path)[..., :3]  # (H, W, 3), floats in [0, 1]
    assert image.std() > 0.01, f"{path} is blank"
    assert (image < 0.95).mean() > 0.005, f"{path} is (almost) all white"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def heldout(synthetic_adata) -> list[str]:
    return list(synthetic_adata.uns["synthetic"]["heldout_combos"])


@pytest.fixture(scope="module")
def prediction(trained_model, controls, heldout) -> ad.AnnData:
    return pf.tl.predict(trained_model, controls, heldout, seed=0)


# ---------------------------------------------------------------------- pp
def test_check_counts(synthetic_adata):
    assert pf.pp.check_counts(synthetic_adata) is None
    bad = synthetic_adata[:20].copy()
    bad.X = np.log1p(bad.X.toarray() if hasattr(bad.X, "toarray") else bad.X) + 0.5
    with pytest.raises(PerturbFlowError, match="not integers"):
        pf.pp.check_counts(bad)
    with pytest.raises(PerturbFlowError, match="layer 'counts' not found"):
        pf.pp.check_counts(bad, layer="counts")


def test_parse_perturbations_writes_obs_and_uns():
    adata = ad.AnnData(
        X=np.ones((5, 2), dtype=np.float32),
        obs=pd.DataFrame({"condition": ["ctrl", "B+A", "A+ctrl", "ctrl+B", "A+B"]}, index=list("abcde")),
    )
    assert pf.pp.parse_perturbations(adata, "condition", "ctrl") is None
    assert adata.obs["perturbation_atoms"].tolist() == ["ctrl", "A+B", "A", "B", "A+B"]
    assert adata.obs["n_perturbation_atoms"].tolist() == [0, 2, 1, 1, 2]
    assert adata.uns["perturbation_atoms"]["atoms"] == ["A", "B"]
    assert adata.uns["perturbation_atoms"]["params"]["perturbation_key"] == "condition"


def test_parse_perturbations_copy_and_key_added(synthetic_adata):
    before = set(synthetic_adata.obs.columns)
    out = pf.pp.parse_perturbations(synthetic_adata, key_added="atoms", copy=True)
    assert isinstance(out, ad.AnnData) and set(synthetic_adata.obs.columns) == before
    assert "atoms" in out.obs and "n_atoms" in out.obs and "atoms" in out.uns
    assert set(out.obs.loc[out.obs["perturbation"] == "control", "n_atoms"]) == {0}
    with pytest.raises(PerturbFlowError, match="perturbation key 'nope' not found"):
        pf.pp.parse_perturbations(synthetic_adata, "nope")


# ---------------------------------------------------------------------- tl
def test_fit_routes_arguments_and_returns_a_trained_model():
    adata = pf.datasets.synthetic(
        n_genes=30, n_atoms=3, n_combos=1, n_contexts=1, n_cells_per_group=15, n_control_cells=40,
        n_heldout_combos=0, seed=2,
    )
    pf.PerturbFlow.setup_anndata(adata, perturbation_key="perturbation", control_value="control")
    model = pf.tl.fit(adata, max_epochs=1, n_latent=4, flow_steps_per_epoch=2, progress_bar=False)
    assert isinstance(model, pf.PerturbFlow) and model.is_trained
    assert model.config.n_latent == 4 and model.config.flow_steps_per_epoch == 2
    with pytest.raises(PerturbFlowError, match="unknown PerturbFlow arguments: n_lattent"):
        pf.tl.fit(adata, max_epochs=1, n_lattent=4)


def test_latent_writes_obsm(trained_model, controls):
    adata = controls[:30].copy()
    assert pf.tl.latent(adata, trained_model) is None
    assert adata.obsm["X_perturbflow"].shape == (30, trained_model.config.n_latent)
    assert adata.uns["X_perturbflow"]["params"]["n_latent"] == trained_model.config.n_latent
    out = pf.tl.latent(controls[:10].copy(), trained_model, key_added="X_z", copy=True)
    assert "X_z" in out.obsm and "X_z" not in controls.obsm


def test_predict_matches_the_model(trained_model, controls, prediction, heldout):
    assert prediction.n_obs == len(heldout) * controls.n_obs
    direct = trained_model.predict(controls, perturbations=heldout, seed=0)
    assert (prediction.X != direct.X).nnz == 0 if hasattr(prediction.X, "nnz") else np.array_equal(prediction.X, direct.X)
    one = pf.tl.predict(trained_model, controls, heldout[0], n_cells=7, n_steps=4)
    assert one.n_obs == 7 and one.uns["perturbflow_prediction"]["n_steps"] == 4


def test_rank_perturbations(trained_model, controls, synthetic_adata):
    candidates = ["G0+G3", "G2+G4", "G1"]
    adata = controls.copy()
    table = pf.tl.rank_perturbations(trained_model, adata, candidates, n_cells=40, seed=0)
    assert list(table.columns) == ["perturbation", "n_atoms", "effect_size", "n_de_genes", "top_genes", "rank"]
    assert sorted(table["perturbation"]) == sorted(candidates)
    assert table["effect_size"].is_monotonic_decreasing and (table["effect_size"] > 0).all()
    assert table["rank"].tolist() == [1, 2, 3]
    assert table.set_index("perturbation").loc["G1", "n_atoms"] == 1
    assert adata.uns["perturbflow_ranking"]["table"].equals(table)
    assert adata.uns["perturbflow_ranking"]["params"]["n_cells"] == 40
    # The whole dataset works as the control AnnData (its control cells are used); copy leaves it alone.
    again = pf.tl.rank_perturbations(trained_model, synthetic_adata, candidates, n_cells=40, seed=0, copy=True)
    assert "perturbflow_ranking" not in synthetic_adata.uns
    assert set(again["perturbation"]) == set(candidates)
    with pytest.raises(PerturbFlowError, match="never seen in training"):
        pf.tl.rank_perturbations(trained_model, adata, ["G0+XYZ"])


def test_rank_effect_is_the_predicted_mean_change(trained_model, controls, synthetic_adata):
    """effect_size is the L2 norm of the predicted mean change from the source control cells."""
    from perturbflow.metrics import log_normalize

    train = synthetic_adata[synthetic_adata.obs["split"] == "train"]
    labels = [p for p in train.obs["perturbation"].unique() if p != "control"]
    table = pf.tl.rank_perturbations(trained_model, controls, labels, n_cells=100, seed=3, copy=True)
    pred = pf.tl.predict(trained_model, controls, labels, n_cells=100, seed=3)
    expr, ctrl = log_normalize(pred), log_normalize(controls)
    rows = controls.obs_names.get_indexer(pred.obs["source_cell"])
    for label in labels[:3]:
        mask = (pred.obs["perturbation"] == label).to_numpy()
        delta = expr[mask].mean(0) - ctrl[rows[mask]].mean(0)
        got = table.set_index("perturbation").loc[label]
        assert np.isclose(got["effect_size"], np.linalg.norm(delta), rtol=1e-5)
        assert got["n_de_genes"] == int((np.abs(delta) > 0.5).sum())
    # Doubles add the effects of two atoms: on average they move cells further than singles.
    by_size = table.groupby("n_atoms")["effect_size"].mean()
    assert by_size[2] > by_size[1]


def test_evaluate_writes_table(prediction, synthetic_adata):
    table = pf.tl.evaluate(prediction, synthetic_adata, baselines=["control"], noise_ceiling=False)
    assert set(table["model"]) == {"perturbflow", "control"}
    assert prediction.uns["perturbflow_evaluation"]["table"].equals(table)


def test_evaluate_scores_expected_counts_unless_told(prediction, synthetic_adata):
    kw = {"baselines": [], "noise_ceiling": False, "copy": True}
    expected = pf.tl.evaluate(prediction, synthetic_adata, **kw)
    sampled = pf.tl.evaluate(prediction, synthetic_adata, pred_layer=None, **kw)
    as_x = prediction.copy()
    as_x.X = as_x.layers.pop("expected")
    pd.testing.assert_frame_equal(expected, pf.tl.evaluate(as_x, synthetic_adata, **kw))  # falls back to X
    assert not np.allclose(expected["mse_top20"], sampled["mse_top20"])
    assert np.isfinite(expected["nb_loglik"]).all()
    with pytest.raises(PerturbFlowError, match="layer 'nope' not found"):
        pf.tl.evaluate(prediction, synthetic_adata, pred_layer="nope", **kw)


# ---------------------------------------------------------------------- pl
def test_pl_metrics_png(prediction, synthetic_adata, tmp_path):
    pf.tl.evaluate(prediction, synthetic_adata, baselines=["control", "additive"], noise_ceiling=False)
    path = tmp_path / "figures" / "metrics.png"
    axes = pf.pl.metrics(prediction, save=path)
    assert len(axes) == 3
    assert_png_not_blank(path)


def test_pl_delta_scatter_png(prediction, synthetic_adata, heldout, tmp_path):
    path = tmp_path / "delta_scatter.png"
    ax = pf.pl.delta_scatter(prediction, synthetic_adata, heldout[0], real_layer=None, save=path)
    assert isinstance(ax, plt.Axes)
    assert_png_not_blank(path)


def test_pl_embedding_png(prediction, synthetic_adata, tmp_path):
    path = tmp_path / "embedding.png"
    axes = pf.pl.embedding(prediction, synthetic_adata, max_cells=400, save=path)
    assert len(axes) == 2 and all(isinstance(a, plt.Axes) for a in axes)
    assert_png_not_blank(path)
    pca = pf.pl.embedding(prediction, synthetic_adata, basis="pca", color=["cell_type", "group"], max_cells=200)
    assert len(pca) == 2
    groups = {t.get_text() for t in pca[1].get_legend().get_texts()}
    assert "control (real)" in groups and any(g.endswith("(predicted)") for g in groups)
    with pytest.raises(PerturbFlowError, match="cannot colour by"):
        pf.pl.embedding(prediction, synthetic_adata, basis="pca", color="nope", max_cells=100)


def test_pl_trajectories_png(trained_model, synthetic_adata, heldout, tmp_path):
    from matplotlib.collections import LineCollection

    path = tmp_path / "trajectories.png"
    ax = pf.pl.trajectories(trained_model, synthetic_adata, heldout[0], n_cells=8, n_steps=6, save=path)
    assert isinstance(ax, plt.Axes)
    (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(lines.get_segments()) == 8 * 6  # one segment per cell and step
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert f"real {heldout[0]} cells" in legend and "control cells" in legend
    assert_png_not_blank(path)


def test_functions_calling_numba_keep_torch_threads(prediction, synthetic_adata):
    """numba's first parallel run raises torch's thread count; evaluate and the plots put it back."""
    import torch

    from perturbflow._threads import preserve_torch_threads

    before = torch.get_num_threads()
    with preserve_torch_threads():
        torch.set_num_threads(before + 1)
    assert torch.get_num_threads() == before
    pf.tl.evaluate(prediction, synthetic_adata, baselines=[], noise_ceiling=False, copy=True)
    assert torch.get_num_threads() == before
