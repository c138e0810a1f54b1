"""Multi-device training on the CPU: Lightning DDP, 2 processes, gloo.

``tests/ddp_train.py`` trains both stages with ``accelerator="cpu", devices=2,
strategy="ddp"`` in a subprocess (Lightning re-launches that script for the second
process); this test loads what rank 0 saved, predicts with it, and compares it with the
single-process model of ``conftest.py`` (the same data and hyper-parameters). Also here: each
process of such a run draws its own flow training sets, and bf16 autocast training on the CPU.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import perturbflow as pf
import perturbflow.data._pairing as pairing
from perturbflow.data import Group, PairedSetDataset, log_normalize_rows
from tests.conftest import is_integer_matrix

SCRIPT = Path(__file__).with_name("ddp_train.py")
LAUNCH_VARIABLES = ("LOCAL_RANK", "RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def run_ddp(out: Path, accelerator: str = "cpu") -> Path:
    """Run ``ddp_train.py`` into ``out``: ``model/``, ``rank0.json``, ``rank1.json``."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    src = str(Path(pf.__file__).resolve().parents[1])  # the perturbflow under test, in both processes
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), "ddp", accelerator],
        cwd=out, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    assert done.returncode == 0, f"DDP training failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return out


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """The output folder of one 2-process DDP training on the CPU."""
    return run_ddp(tmp_path_factory.mktemp("ddp"))


def ranks_of(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_both_stages_ran_on_two_processes(ddp_run, synthetic_adata):
    ranks = ranks_of(ddp_run)
    assert [r["rank"] for r in ranks] == [0, 1]
    for r in ranks:
        assert r["world_size"] == 2 and r["backend"] == "gloo"
        assert r["vae_world_size"] == 2  # scvi-tools' trainer ran on both processes
    # each process was given half of each epoch's cells (scvi-tools' distributed sampler)
    n_fit = int((synthetic_adata.obs["split"] != "test").sum())
    n_train = n_fit - int(n_fit * 0.1)
    assert ranks[0]["vae_steps"] == 15 * math.ceil(math.ceil(n_train / 2) / 128)
    # the processes saw different cells (VAE) and drew different sets (flow), so equal weights
    # on both mean that their gradients were averaged at every step
    for key in ("vae_checksum", "flow_checksum", "correction_scale"):
        assert ranks[0][key] == ranks[1][key], key


def test_only_rank_zero_wrote_the_model(ddp_run):
    assert sorted(p.name for p in ddp_run.iterdir()) == ["model", "rank0.json", "rank1.json"]
    loaded = pf.PerturbFlow.load(ddp_run / "model")
    flow_sum = float(sum(p.detach().double().abs().sum() for p in loaded.flow.parameters()))
    assert flow_sum == pytest.approx(ranks_of(ddp_run)[0]["flow_checksum"], rel=1e-6)


def delta_correlation(pred, real, controls) -> float:
    """Mean Pearson correlation, over held-out (combination, cell type) groups, of the predicted
    and real mean log-normalised changes from the control cells."""
    out = []
    for (label, ctx), obs in real.obs.groupby(["perturbation", "cell_type"], observed=True):
        ctrl = np.asarray(log_normalize_rows(controls[controls.obs["cell_type"] == ctx].X).mean(0)).ravel()
        truth = np.asarray(log_normalize_rows(real[obs.index].X).mean(0)).ravel() - ctrl
        rows = (pred.obs["perturbation"] == label).to_numpy() & (pred.obs["cell_type"] == ctx).to_numpy()
        guess = np.asarray(log_normalize_rows(pred.X[rows]).mean(0)).ravel() - ctrl
        out.append(np.corrcoef(truth, guess)[0, 1])
    return float(np.mean(out))


def test_ddp_model_predicts_like_a_single_process_model(ddp_run, synthetic_adata, controls, trained_model):
    model = pf.PerturbFlow.load(ddp_run / "model")
    held_out = synthetic_adata.uns["synthetic"]["heldout_combos"]
    pred = model.predict(controls, perturbations=held_out, seed=0, device="cpu")
    n = len(held_out) * controls.n_obs
    assert pred.shape == (n, synthetic_adata.n_vars)
    assert is_integer_matrix(pred.X)
    assert np.all(np.isfinite(pred.layers["expected"])) and np.all(np.isfinite(pred.obsm["X_perturbflow"]))
    real = synthetic_adata[synthetic_adata.obs["perturbation"].isin(held_out)]
    ddp = delta_correlation(pred, real, controls)
    single = delta_correlation(trained_model.predict(controls, perturbations=held_out, seed=0), real, controls)
    assert ddp > 0.5, ddp  # the held-out combinations' changes are found
    assert ddp > single - 0.15, (ddp, single)  # and about as well as on one process


# ---------------------------------------------------------------- per-process random streams
def _dataset(coupling: str = "random", seed: int = 3) -> PairedSetDataset:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(60, 4)).astype(np.float32)
    groups = [
        Group("A", 0, np.array([1]), np.arange(0, 20), np.arange(40, 60), np.zeros(4, np.float32)),
        Group("B", 0, np.array([2]), np.arange(20, 40), np.arange(40, 60), np.zeros(4, np.float32)),
    ]
    return PairedSetDataset(z, groups, np.zeros((1, 8)), set_size=5, n_items=6, coupling=coupling, seed=seed)


def _draw(dataset: PairedSetDataset, n: int = 6) -> np.ndarray:
    return np.stack([np.concatenate([dataset[i]["x_0"].numpy(), dataset[i]["x_1"].numpy()]) for i in range(n)])


@pytest.mark.parametrize("coupling", ["random", "ot", "gaussian"])
def test_each_rank_draws_its_own_sets(monkeypatch, coupling):
    single = _draw(_dataset(coupling))
    monkeypatch.setattr(pairing, "global_rank", lambda: 1)
    rank_1 = _draw(_dataset(coupling))
    assert not np.allclose(single, rank_1)
    monkeypatch.setattr(pairing, "global_rank", lambda: 0)
    np.testing.assert_array_equal(_draw(_dataset(coupling)), single)


def test_single_process_stream_is_the_seed_stream():
    """Rank 0 draws exactly as before ranks were told apart: the seed's generator, in order."""
    dataset = _dataset("random", seed=7)
    rng = np.random.default_rng(7)
    for i in range(4):
        g = rng.integers(2)
        src = rng.choice(dataset.groups[g].source_idx, 5)
        tgt = rng.choice(dataset.groups[g].target_idx, 5)
        item = dataset[i]
        np.testing.assert_array_equal(item["x_0"].numpy(), dataset.z[src])
        np.testing.assert_array_equal(item["x_1"].numpy(), dataset.z[tgt])


def test_loader_workers_draw_their_own_sets():
    loader = torch.utils.data.DataLoader(_dataset(), batch_size=1, num_workers=2)
    batches = [b["x_0"].numpy() for b in loader]  # workers 0 and 1 take turns
    assert not np.allclose(batches[0], batches[1])
    np.testing.assert_array_equal(batches[0][0], _dataset()[0]["x_0"].numpy())


# ---------------------------------------------------------------- precision and device
def test_bf16_mixed_training_on_the_cpu(synthetic_adata, controls):
    model = pf.PerturbFlow(synthetic_adata, n_latent=8, flow_steps_per_epoch=5)
    model.train(max_epochs=2, accelerator="cpu", precision="bf16-mixed", progress_bar=False)
    for module in (model.vae.module, model.flow):  # autocast computes in bf16, weights stay float32
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in module.parameters())
    pred = model.predict(controls, perturbations=["G0+G1"], seed=0)
    assert np.all(np.isfinite(pred.layers["expected"]))


def test_predict_device_choice(trained_model, controls):
    before = trained_model.predict(controls, perturbations=["G0+G1"], seed=1)
    on_cpu = trained_model.predict(controls, perturbations=["G0+G1"], seed=1, device="cpu")
    if not torch.cuda.is_available():  # None picks the CPU here, so the results are the same
        np.testing.assert_array_equal(before.X.toarray(), on_cpu.X.toarray())
        np.testing.assert_array_equal(before.layers["expected"], on_cpu.layers["expected"])
        with pytest.raises(pf.PerturbFlowError, match="CUDA"):
            trained_model.predict(controls, perturbations=["G0+G1"], device="cuda")
    with pytest.raises(pf.PerturbFlowError, match="unknown device"):
        trained_model.predict(controls, perturbations=["G0+G1"], device="tpu-ish")
    for module in (trained_model.vae.module, trained_model.flow):
        assert all(p.device.type == "cpu" for p in module.parameters())


# ---------------------------------------------------------------- rank 0 writes; the CLI
def test_save_writes_only_on_rank_zero(trained_model, tmp_path, monkeypatch):
    import perturbflow._distributed as distributed

    monkeypatch.setattr(distributed, "global_rank", lambda: 1)
    trained_model.save(tmp_path / "rank1")
    assert not (tmp_path / "rank1").exists()
    monkeypatch.setattr(distributed, "global_rank", lambda: 0)
    trained_model.save(tmp_path / "rank0")
    assert pf.PerturbFlow.load(tmp_path / "rank0").is_trained


def test_cli_passes_strategy_precision_and_device():
    from perturbflow.cli import build_parser

    parser = build_parser()
    train = ["train", "x.h5ad", "--perturbation-key", "p", "--control", "c", "--out", "m"]
    args = parser.parse_args(train)
    assert (args.strategy, args.precision) == ("auto", None)
    args = parser.parse_args([*train, "--devices", "2", "--strategy", "ddp", "--precision", "bf16-mixed"])
    assert (args.devices, args.strategy, args.precision) == ("2", "ddp", "bf16-mixed")
    predict = ["predict", "m", "--control-cells", "c.h5ad", "--perturbations", "A", "--out", "p.h5ad"]
    assert parser.parse_args(predict).device is None
    assert parser.parse_args([*predict, "--device", "cpu"]).device == "cpu"


def test_flow_ema_update_pickles_and_matches_torch():
    """``ddp_spawn`` pickles the trainer's callbacks; the EMA update must survive it unchanged."""
    import pickle

    from torch.optim.swa_utils import get_ema_multi_avg_fn

    from perturbflow.train._fit_flow import EMAUpdate

    update = pickle.loads(pickle.dumps(EMAUpdate(0.9)))
    ema, current = [torch.randn(5), torch.randn(3, 2)], [torch.randn(5), torch.randn(3, 2)]
    expected = [e.clone() for e in ema]
    get_ema_multi_avg_fn(0.9)(expected, current, 3)
    update(ema, current, 3)
    for got, want, now in zip(ema, expected, current):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert not torch.equal(got, now)
