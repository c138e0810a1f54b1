"""The flow's correction in a context new to it: chosen on the nearest measured context,
held out of the flow's fit (``new_context_flow="probe"``), or applied whole where enough
contexts were measured (``"auto"``)."""

from __future__ import annotations

import numpy as np
import pytest

import perturbflow as pf
from perturbflow.data import Group
from perturbflow.train import (
    DECODINGS,
    FEW_CONTEXTS_FRACTION,
    MIN_GAIN,
    GeneSpace,
    apply_part,
    best_parts,
    contexts_to_hold_out,
    nearest_context,
    new_context_scores,
)


def test_the_measured_context_nearest_each_new_one_is_held_out():
    measured = {f"m{i}": np.array([float(i), 0.0]) for i in range(5)}
    assert contexts_to_hold_out({"new": np.array([3.2, 0.1])}, measured) == ["m3"]
    assert contexts_to_hold_out({"new": np.array([3.2, 0.1])}, dict(list(measured.items())[:4])) == []  # too few
    assert contexts_to_hold_out({}, measured) == []
    # one held out per new context, at most a fifth of the measured ones (here 1)
    assert contexts_to_hold_out({"a": np.array([0.1, 0.0]), "b": np.array([4.0, 0.0])}, measured) == ["m0"]
    ten = {f"m{i}": np.array([float(i), 0.0]) for i in range(10)}
    assert contexts_to_hold_out({"a": np.array([0.1, 0.0]), "b": np.array([8.9, 0.0])}, ten) == ["m0", "m9"]
    assert nearest_context(np.array([1.9, 0.0]), measured) == "m2" and nearest_context(np.zeros(2), {}) is None


def test_the_parts_of_a_correction():
    rng = np.random.default_rng(0)
    base, end = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    mean = (end - base).mean(0)
    np.testing.assert_allclose(apply_part(base, end, "off"), base)
    np.testing.assert_allclose(apply_part(base, end, "full"), end)
    np.testing.assert_allclose(apply_part(base, end, "mean"), base + mean)
    np.testing.assert_allclose(apply_part(base, end, "shape"), end - mean)
    # the two parts add up to the whole
    np.testing.assert_allclose(apply_part(base, end, "mean") + apply_part(base, end, "shape") - base, end)


def _group(context: int, rng, n=120, d=4) -> tuple[Group, np.ndarray]:
    z = rng.normal(size=(2 * n, d)).astype(np.float32)
    prior = np.full(d, 0.5, dtype=np.float32)
    return Group("g", context, np.array([1]), np.arange(n, 2 * n), np.arange(n), prior), z


@pytest.mark.parametrize(
    ("truth", "flow", "chosen"),
    [
        ("shifted", "shifted", "mean"),  # a right mean move (shape none): mean and full tie, the smaller wins
        ("base", "noisy", "off"),  # the flow adds only scatter: nothing is kept
        ("shifted", "noisy_shifted", "mean"),  # right mean, wrong scatter: only the mean
    ],
)
def test_the_part_that_predicts_the_held_out_context_best_is_chosen(truth, flow, chosen):
    rng = np.random.default_rng(1)
    g, z = _group(0, rng)
    move = np.array([2.0, -1.0, 0.0, 1.0], dtype=np.float32)
    src = z[g.source_idx]
    z[g.target_idx] = src + g.prior + (move if truth == "shifted" else 0)  # paired real cells

    def transport(z0, atom_ids, context, prior):
        end = z0 + prior + (move if "shifted" in flow else 0)
        if "noisy" in flow:
            end = end + np.random.default_rng(2).normal(scale=1.5, size=end.shape)
        return end

    scores = new_context_scores(transport, [g], z, ["held"], seed=0)
    assert set(scores["held"]) == {"latent"} and set(scores["held"]["latent"]) == {"off", "mean", "shape", "full"}
    assert best_parts(scores) == {"held": chosen}


def test_gene_space_scores_are_the_latent_ones_when_decoding_is_a_rotation():
    """Energy distance is unchanged by a rotation and a shift, and so is a PCA with every
    component: scored through a "decoder" that rotates and shifts the latents, each part
    scores exactly as it does on the latents."""
    rng = np.random.default_rng(3)
    g, z = _group(0, rng)
    z[g.target_idx] += np.array([1.0, 0.0, -1.0, 0.5], dtype=np.float32)
    rotation = np.linalg.qr(rng.normal(size=(4, 4)))[0]

    def transport(z0, atom_ids, context, prior):
        return z0 + prior + 0.3 * np.sin(z0)

    genes = GeneSpace(real=lambda rows: z[rows] @ rotation + 2.0, predicted=lambda group, rows, z0, z1: z1 @ rotation + 2.0)
    latent = new_context_scores(transport, [g], z, ["held"], seed=0)
    decoded = new_context_scores(transport, [g], z, ["held"], seed=0, genes=genes)
    for part in latent["held"]["latent"]:
        np.testing.assert_allclose(decoded["held"]["genes"][part], latent["held"]["latent"][part], rtol=1e-4)
        np.testing.assert_allclose(decoded["held"]["latent"][part], latent["held"]["latent"][part])


def test_a_part_is_kept_only_if_it_beats_off_by_the_margin_on_all_cells_and_both_halves_in_latent_space():
    off = [1.0, 1.0, 1.0]
    steady = {"off": off, "mean": [0.7, 0.75, 0.65], "shape": [1.2, 1.2, 1.2], "full": [0.6, 0.7, 0.75]}
    lucky = {"off": off, "mean": [0.7, 0.6, 0.97], "shape": [1.2, 1.2, 1.2], "full": [1.1, 1.1, 1.1]}
    marginal = {"off": off, "mean": [0.97, 0.96, 0.97], "shape": off, "full": off}
    tie = {"off": off, "mean": [0.5, 0.5, 0.5], "shape": off, "full": [0.5, 0.6, 0.4]}
    chosen = best_parts({c: {"latent": s} for c, s in zip("abcd", (steady, lucky, marginal, tie))})
    assert chosen == {"a": "full", "b": "off", "c": "off", "d": "mean"}  # a tie goes to the earlier part
    assert 1 - 0.96 < MIN_GAIN < 1 - 0.75
    # the gene-space scores are a record: they do not change the choice
    worse = {"off": off, "mean": [2.0, 2.0, 2.0], "shape": off, "full": off}
    assert best_parts({"a": {"genes": worse, "latent": steady}, "b": {"genes": steady, "latent": marginal}}) == {
        "a": "full", "b": "off"}


def test_the_probe_holds_out_the_nearest_measured_context_and_predicts_with_its_choice(tmp_path):
    adata = pf.datasets.synthetic(n_genes=50, n_atoms=3, n_combos=0, n_contexts=6, n_cells_per_group=30,
                                  n_control_cells=60, n_heldout_combos=0, seed=0)
    contexts = sorted(adata.obs["cell_type"].unique())
    new = contexts[-1]  # its perturbed cells are held out: a new context for the flow
    perturbed = adata.obs["perturbation"] != "control"
    adata.obs["split"] = np.where(perturbed & (adata.obs["cell_type"] == new), "test", "train")
    pf.PerturbFlow.setup_anndata(adata, perturbation_key="perturbation", control_value="control",
                                 context_keys=["cell_type"], split_key="split")
    model = pf.PerturbFlow(adata, n_latent=6, flow_steps_per_epoch=10, exact_mean="auto", new_context_flow="probe")
    model.train(max_epochs=4, progress_bar=False)

    (held,) = model.new_context_parts  # the measured context nearest the new one, by control latents
    z = model.get_latent_representation()
    control = (~perturbed).to_numpy()
    means = {c: z[control & (adata.obs["cell_type"] == c).to_numpy()].mean(0) for c in contexts}
    assert held == nearest_context(means[new], {c: m for c, m in means.items() if c not in (new,)})
    # the probe flow was fitted without it; the flow that predicts, with it
    assert held in model.flow_contexts and new not in model.flow_contexts
    assert set(model.new_context_scores[held]) == {"latent", "genes"}
    assert set(model.new_context_scores[held]["genes"]) == {"off", "mean", "shape", "full"}
    choice = model.new_context_parts[held]
    assert choice in ("off", "mean", "shape", "full") and model.new_context_choice(new) == choice

    controls = adata[control & (adata.obs["cell_type"] == new).to_numpy()].copy()
    pred = model.predict(controls, perturbations=["G0"], seed=0)
    info = pred.uns["perturbflow_prediction"]
    assert info["flow_correction"][new] == (0.0 if choice == "off" else 1.0)
    assert info["flow_correction_part"][new] == (choice if choice in ("mean", "shape") else "all")
    # the transfer's bandwidth is chosen near the new context, from the 5 measured ones' errors
    transfer = model.prior.transfer
    assert set(next(iter(transfer.local_errors.values()))) == set(contexts) - {new}
    assert info["context_bandwidth"][new] == transfer.bandwidth_in(new)  # described by its stored control mean
    # with exact_mean="auto", so is whether the group means are kept exact: each measured
    # context was predicted from the others, both ways, and scored against its real cells
    assert set(model.decoding_scores) == set(contexts) - {new}
    assert all(set(DECODINGS) <= set(s) and all(np.isfinite(list(s.values()))) for s in model.decoding_scores.values())
    assert info["exact_mean"][new] == model.exact_mean_in(new)  # the share fitted on the measured contexts
    assert 0 <= info["exact_mean"][new] <= 1

    model.save(tmp_path / "model")
    loaded = pf.PerturbFlow.load(tmp_path / "model")
    assert loaded.new_context_parts == model.new_context_parts
    assert loaded.prior.transfer.local_errors.keys() == transfer.local_errors.keys()
    again = loaded.predict(controls, perturbations=["G0"], seed=0)
    assert again.uns["perturbflow_prediction"]["context_bandwidth"] == info["context_bandwidth"]
    assert np.allclose(again.layers["expected"], pred.layers["expected"], atol=1e-4)
    model.config.new_context_flow = "off"  # a fixed choice overrides the calibrated one
    assert model.new_context_choice(new) == "off" and model.correction_scale_in(new) == 0.0
    # "auto": the whole correction, the training data having measured 5 contexts; with fewer,
    # its shape at FEW_CONTEXTS_FRACTION
    model.config.new_context_flow = "auto"
    assert model.new_context_choice(new) == "full" and model.correction_scale_in(new) == 1.0
    model.measured_contexts = model.measured_contexts[:4]
    assert model.new_context_choice(new) == "shape"
    assert model.correction_scale_in(new) == FEW_CONTEXTS_FRACTION
