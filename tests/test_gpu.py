"""CUDA checks: training on one GPU (32-bit and bf16 autocast), prediction on the GPU and its
output contract, save and load, bf16 autocast of the backbones, DDP on two GPUs where there are.

Deselected by default (marker ``gpu``); on a machine with a CUDA device::

    pytest -m gpu tests/test_gpu.py

Each test skips, saying why, where ``torch.cuda.is_available()`` is false. They train on the
small seeded synthetic data of ``conftest.py`` for a few epochs and take seconds on a GPU
(the two-GPU DDP test, a minute: it starts a second Python process).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import perturbflow as pf
from perturbflow.backbones import list_backbones
from perturbflow.flow import integrate
from perturbflow.train import build_flow
from tests.conftest import is_integer_matrix, small_synthetic
from tests.test_ddp import delta_correlation, ranks_of, run_ddp

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs a CUDA device (torch.cuda.is_available() is False)",
    ),
]

N_LATENT = 8


def _relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float(
        torch.linalg.vector_norm(approx.float() - exact)
        / torch.linalg.vector_norm(exact).clamp(min=1e-12)
    )


@pytest.fixture(scope="module")
def gpu_data():
    return small_synthetic()


@pytest.fixture(scope="module")
def gpu_training(gpu_data):
    """A model trained on one GPU, and the peak GPU memory its training allocated."""
    torch.cuda.reset_peak_memory_stats()
    model = pf.PerturbFlow(gpu_data, n_latent=N_LATENT, flow_steps_per_epoch=20)
    model.train(max_epochs=3, accelerator="gpu", devices=1, progress_bar=False)
    return model, torch.cuda.max_memory_allocated()


@pytest.fixture(scope="module")
def gpu_model(gpu_training):
    return gpu_training[0]


@pytest.fixture(scope="module")
def gpu_controls(gpu_data):
    return gpu_data[gpu_data.obs["perturbation"] == "control"].copy()


def test_train_on_one_gpu(gpu_training):
    gpu_model, peak_bytes = gpu_training
    assert gpu_model.is_trained
    assert peak_bytes > 0  # the trainers did put tensors on the GPU
    # the trained modules come back to the CPU, so prediction and saving need no device
    for module in (gpu_model.vae.module, gpu_model.flow):
        params = list(module.parameters())
        assert all(p.device.type == "cpu" for p in params)
        assert all(torch.isfinite(p).all() for p in params)


def test_predict_after_gpu_training(gpu_model, gpu_data, gpu_controls):
    held_out = gpu_data.uns["synthetic"]["heldout_combos"]
    torch.cuda.reset_peak_memory_stats()
    pred = gpu_model.predict(gpu_controls, perturbations=held_out, seed=0)  # device=None: the GPU
    assert torch.cuda.max_memory_allocated() > 0
    for module in (gpu_model.vae.module, gpu_model.flow):  # back on the CPU after it
        assert all(p.device.type == "cpu" for p in module.parameters())
    n = len(held_out) * gpu_controls.n_obs
    assert pred.shape == (n, gpu_data.n_vars)
    assert list(pred.var_names) == list(gpu_data.var_names)
    assert is_integer_matrix(pred.X) and pred.X.dtype.kind == "i"
    assert pred.layers["expected"].shape == pred.shape and np.all(
        np.isfinite(pred.layers["expected"])
    )
    assert pred.obsm["X_perturbflow"].shape == (n, N_LATENT)
    assert set(pred.obs["perturbation"]) == set(held_out)


def test_predict_on_cuda_matches_cpu(gpu_model, gpu_data, gpu_controls):
    held_out = gpu_data.uns["synthetic"]["heldout_combos"]
    on_gpu = gpu_model.predict(gpu_controls, perturbations=held_out, seed=2, device="cuda")
    on_cpu = gpu_model.predict(gpu_controls, perturbations=held_out, seed=2, device="cpu")
    np.testing.assert_allclose(on_gpu.obsm["X_perturbflow"], on_cpu.obsm["X_perturbflow"], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(on_gpu.layers["expected"], on_cpu.layers["expected"], rtol=1e-3, atol=1e-3)
    # counts are rounded from the expected values: the rare entry near a rounding edge may flip
    assert np.mean(on_gpu.X.toarray() != on_cpu.X.toarray()) < 1e-2
    # the decoder's own sampling (no flow), from the GPU's random stream
    pred = gpu_model.predict(gpu_controls, perturbations=held_out, seed=2, device="cuda", method="latent_shift")
    assert is_integer_matrix(pred.X) and np.all(np.isfinite(pred.layers["expected"]))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_save_load_round_trip_after_gpu_training(gpu_model, gpu_data, gpu_controls, tmp_path, device):
    held_out = gpu_data.uns["synthetic"]["heldout_combos"]
    gpu_model.save(tmp_path / "model")
    loaded = pf.PerturbFlow.load(tmp_path / "model")
    before = gpu_model.predict(gpu_controls, perturbations=held_out, seed=3, device=device)
    after = loaded.predict(gpu_controls, perturbations=held_out, seed=3, device=device)
    np.testing.assert_array_equal(before.X.toarray(), after.X.toarray())
    np.testing.assert_allclose(
        before.layers["expected"], after.layers["expected"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        before.obsm["X_perturbflow"], after.obsm["X_perturbflow"], rtol=1e-5, atol=1e-6
    )


def _random_flow(backbone: str, n_atoms: int = 5):
    """A flow on CUDA with every weight perturbed: at init the backbones output exactly zero."""
    config = pf.PerturbFlowConfig(backbone=backbone)
    flow = build_flow(config, n_atoms).cuda().eval()
    gen = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, device="cuda"))
    return flow, config


def _flow_inputs(config, n_sets: int = 16, n_atoms: int = 5):
    gen = torch.Generator(device="cuda").manual_seed(1)
    D = config.n_latent
    return {
        "x_0": torch.randn(n_sets, config.set_size, D, generator=gen, device="cuda"),  # (B, S, D)
        "atoms": torch.randint(1, n_atoms + 1, (n_sets, 2), generator=gen, device="cuda"),  # (B, A)
        "context": torch.randn(n_sets, 2 * D, generator=gen, device="cuda"),  # (B, 2D)
        "prior": 0.1 * torch.randn(n_sets, D, generator=gen, device="cuda"),  # (B, D)
    }


@pytest.mark.parametrize("backbone", sorted(list_backbones()))
def test_backbone_bf16_autocast_close_to_float32(backbone):
    flow, config = _random_flow(backbone)
    inp = _flow_inputs(config)
    t = torch.rand(inp["x_0"].shape[0], device="cuda")  # (B,)
    with torch.no_grad():
        cond = flow.condition(inp["atoms"], inp["context"], inp["prior"])  # (B, C)
        v32 = flow.backbone(x_t=inp["x_0"], t=t, cond=cond)  # (B, S, D)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            v16 = flow.backbone(x_t=inp["x_0"], t=t, cond=cond)
    assert v16.shape == v32.shape and v16.device.type == "cuda"
    assert torch.isfinite(v16).all()
    assert v32.abs().max() > 0  # the perturbed weights give a non-trivial velocity to compare
    assert _relative_error(v16, v32) < 5e-2


@pytest.mark.parametrize("backbone", sorted(list_backbones()))
def test_ode_on_cuda_bf16_close_to_float32(backbone):
    """The whole integration (condition, velocity, midpoint steps) on the device, in both precisions."""
    flow, config = _random_flow(backbone)
    inp = _flow_inputs(config)
    with torch.no_grad():
        cond = flow.condition(inp["atoms"], inp["context"], inp["prior"])  # (B, C)
        x32 = integrate(
            flow.velocity_field(cond, inp["prior"]), inp["x_0"], n_steps=10
        )  # (B, S, D)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            x16 = integrate(flow.velocity_field(cond, inp["prior"]), inp["x_0"], n_steps=10)
    assert x16.shape == x32.shape and torch.isfinite(x16).all()
    assert _relative_error(x16 - inp["x_0"], x32 - inp["x_0"]) < 5e-2


def test_transport_on_cuda_matches_cpu():
    flow, config = _random_flow("mlp")
    inp = _flow_inputs(config)
    on_gpu = flow.transport(inp["x_0"], inp["atoms"], inp["context"], inp["prior"], n_steps=10)
    on_cpu = flow.cpu().transport(
        *(inp[k].cpu() for k in ("x_0", "atoms", "context", "prior")), n_steps=10
    )
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-4, atol=1e-4)


def test_bf16_mixed_training_on_gpu(gpu_data, gpu_controls, gpu_model):
    """Both stages under bf16 autocast: float32 weights, finite, and a model like the 32-bit one."""
    model = pf.PerturbFlow(gpu_data, n_latent=N_LATENT, flow_steps_per_epoch=20)
    model.train(max_epochs=3, accelerator="gpu", devices=1, precision="bf16-mixed", progress_bar=False)
    for module in (model.vae.module, model.flow):
        params = list(module.parameters())
        assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params)
        assert all(torch.isfinite(p).all() for p in params)
    held_out = gpu_data.uns["synthetic"]["heldout_combos"]
    real = gpu_data[gpu_data.obs["perturbation"].isin(held_out)]
    bf16 = delta_correlation(model.predict(gpu_controls, perturbations=held_out, seed=0), real, gpu_controls)
    fp32 = delta_correlation(gpu_model.predict(gpu_controls, perturbations=held_out, seed=0), real, gpu_controls)
    assert bf16 > fp32 - 0.15, (bf16, fp32)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_ddp_on_two_gpus(tmp_path):
    out = run_ddp(tmp_path, accelerator="gpu")
    ranks = ranks_of(out)
    assert all(r["world_size"] == 2 and r["backend"] == "nccl" for r in ranks)
    for key in ("vae_checksum", "flow_checksum"):
        assert ranks[0][key] == pytest.approx(ranks[1][key], rel=1e-6), key
    loaded = pf.PerturbFlow.load(out / "model")
    data = small_synthetic()
    pred = loaded.predict(data[data.obs["perturbation"] == "control"], perturbations=["G0+G1"], device="cuda")
    assert np.all(np.isfinite(pred.layers["expected"]))
