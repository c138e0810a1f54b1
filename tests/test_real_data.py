"""Real data: Norman 2019 (K562 CRISPRa) with held-out two-gene combinations whose singles were seen."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import perturbflow as pf
from tests.conftest import NORMAN_FILE, is_integer_matrix, require

HELD_OUT = ["KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+SLC38A2", "MAP2K3+MAP2K6", "MAPK1+TGFBR2"]


@pytest.fixture(scope="module")
def norman():
    adata = ad.read_h5ad(require(NORMAN_FILE))
    adata = adata[(adata.obs["dataset"] == "norman19").to_numpy() & adata.obs["counts_recovered_exact"].to_numpy()].copy()
    adata.obs["split"] = np.where(adata.obs["perturbation"].isin(HELD_OUT), "test", "train")
    return adata


@pytest.fixture(scope="module")
def prediction(norman):
    pf.PerturbFlow.setup_anndata(norman, perturbation_key="perturbation", control_value="control",
                                 layer="counts", split_key="split")
    model = pf.PerturbFlow(norman)
    model.train(max_epochs=25, progress_bar=False, seed=0)
    for atom in ("KLF1", "MAP2K6", "TGFBR2", "MAPK1", "MAP2K3", "SLC38A2"):
        assert atom in model.atoms
    controls = norman[norman.obs["perturbation"] == "control"]
    return model.predict(controls, perturbations=HELD_OUT, seed=0)


def test_output_contract(norman, prediction):
    n_controls = int((norman.obs["perturbation"] == "control").sum())
    assert prediction.n_obs == n_controls * len(HELD_OUT)
    assert list(prediction.var_names) == list(norman.var_names)
    assert is_integer_matrix(prediction.X)
    assert set(prediction.obs["perturbation"]) == set(HELD_OUT)


def test_held_out_combinations_were_never_fitted(norman):
    assert not norman.obs.loc[norman.obs["split"] == "train", "perturbation"].isin(HELD_OUT).any()


def test_beats_the_control_baseline(norman, prediction):
    table = pf.tl.evaluate(prediction, norman, real_layer="counts", baselines=["control"], noise_ceiling=False)
    means = table.groupby("model")[["pearson_delta_top20", "mse_top20"]].mean()
    assert means.loc["perturbflow", "pearson_delta_top20"] > means.loc["control", "pearson_delta_top20"] + 0.3
    assert means.loc["perturbflow", "mse_top20"] < means.loc["control", "mse_top20"]
