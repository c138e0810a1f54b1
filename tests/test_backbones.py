"""Tests shared by every registered velocity backbone, plus the registry itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from perturbflow._errors import PerturbFlowError
from perturbflow.backbones import (
    build_backbone,
    get_backbone,
    list_backbones,
    register_backbone,
)
from perturbflow.backbones._registry import _BACKBONES
from perturbflow.backbones.ssm import BidirectionalS4D

NAMES = sorted(list_backbones())
N_COND = 12


@pytest.fixture(autouse=True)
def _one_thread():
    """Run single-threaded: on tensors this small, intra-op threads cost more than they save."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)


def _inputs(n_sets: int, n_cells: int, n_latent: int, n_cond: int = N_COND):
    return {
        "x_t": torch.randn(n_sets, n_cells, n_latent),
        "t": torch.rand(n_sets),
        "cond": torch.randn(n_sets, n_cond),
    }


def _train(model: nn.Module, inputs: dict, n_steps: int, lr: float = 1e-2) -> None:
    """A few Adam steps towards a random target, so that zero-initialised layers move."""
    target = torch.randn_like(inputs["x_t"])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(n_steps):
        optimizer.zero_grad()
        ((model(**inputs) - target) ** 2).mean().backward()
        optimizer.step()


def test_all_backbones_registered():
    assert {"mlp", "dit", "settransformer", "ssm"} <= set(NAMES)
    assert all(list_backbones().values()), "every backbone needs a one-line description"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(3, 1, 10), (2, 5, 16)])
def test_shape_and_zero_init(name, shape):
    torch.manual_seed(0)
    n_sets, n_cells, n_latent = shape
    model = build_backbone(name, n_latent=n_latent, n_cond=N_COND)
    out = model(**_inputs(n_sets, n_cells, n_latent))
    assert out.shape == shape
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    model = build_backbone(name, n_latent=10, n_cond=N_COND)
    inputs = _inputs(4, 3, 10)
    # with zero-initialised outputs and gates, inner layers get no gradient on the first step
    _train(model, inputs, n_steps=3)
    model.zero_grad()
    (model(**inputs) - torch.randn(4, 3, 10)).pow(2).mean().backward()
    for param_name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, param_name
            assert torch.isfinite(param.grad).all(), param_name
            assert torch.count_nonzero(param.grad) > 0, param_name


@pytest.mark.parametrize("name", NAMES)
def test_permutation_equivariant_over_cells(name):
    torch.manual_seed(0)
    model = build_backbone(name, n_latent=10, n_cond=N_COND)
    inputs = _inputs(3, 7, 10)
    _train(model, inputs, n_steps=2)
    model.eval()
    perm = torch.randperm(7)
    with torch.no_grad():
        out = model(**inputs)
        out_perm = model(**{**inputs, "x_t": inputs["x_t"][:, perm]})
    assert out.abs().max() > 0
    torch.testing.assert_close(out_perm, out[:, perm], atol=1e-5, rtol=0)


def test_settransformer_mixes_cells():
    """Unlike the per-cell backbones, a cell's velocity depends on the other cells of its set."""
    torch.manual_seed(0)
    model = build_backbone("settransformer", n_latent=10, n_cond=N_COND)
    inputs = _inputs(2, 5, 10)
    _train(model, inputs, n_steps=3)
    x_other = inputs["x_t"].clone()
    x_other[:, 1:] = torch.randn(2, 4, 10)
    with torch.no_grad():
        first = model(**inputs)[:, 0]
        first_other = model(**{**inputs, "x_t": x_other})[:, 0]
    assert not torch.allclose(first, first_other)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name):
    torch.manual_seed(0)
    model = build_backbone(name, n_latent=10, n_cond=N_COND)
    inputs = _inputs(2, 5, 10)
    _train(model, inputs, n_steps=2)
    torch.manual_seed(1)
    copy = build_backbone(name, n_latent=10, n_cond=N_COND)
    copy.load_state_dict(model.state_dict())
    model.eval()
    copy.eval()
    with torch.no_grad():
        assert torch.equal(model(**inputs), copy(**inputs))


@pytest.mark.parametrize("name", NAMES)
def test_fits_class_velocities(name):
    """Learns a class-specific constant velocity far better than the train-mean velocity."""
    torch.manual_seed(0)
    n_sets, n_cells, n_latent, n_classes, n_steps = 16, 2, 8, 4, 150
    velocities = 2 * torch.randn(n_classes, n_latent)  # (K, D)

    def sample():
        labels = torch.randint(n_classes, (n_sets,))
        inputs = {
            "x_t": torch.randn(n_sets, n_cells, n_latent),
            "t": torch.rand(n_sets),
            "cond": nn.functional.one_hot(labels, n_classes).float(),
        }
        return inputs, velocities[labels, None].expand(-1, n_cells, -1)  # (B, S, D)

    model = build_backbone(name, n_latent=n_latent, n_cond=n_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    train_mean = torch.zeros(n_latent)
    for _ in range(n_steps):
        inputs, target = sample()
        train_mean += target.mean(dim=(0, 1)) / n_steps
        optimizer.zero_grad()
        ((model(**inputs) - target) ** 2).mean().backward()
        optimizer.step()

    inputs, target = sample()
    with torch.no_grad():
        loss = ((model(**inputs) - target) ** 2).mean()
    baseline = ((train_mean - target) ** 2).mean()
    assert loss < 0.2 * baseline, (loss.item(), baseline.item())


def test_ssm_convolution_matches_recurrence():
    """The FFT convolution with the closed-form kernel equals a step-by-step scan of the SSM."""
    torch.manual_seed(0)
    d_model, length = 3, 7
    layer = BidirectionalS4D(d_model=d_model, d_state=4, dropout_rate=0.0)
    h = torch.randn(2, length, d_model)  # (N, L, d)

    def scan(u: torch.Tensor, rows: slice) -> torch.Tensor:
        dt = layer.log_dt[rows].exp()[:, None]  # (d, 1)
        a = torch.complex(-layer.log_a_real[rows].exp(), layer.a_imag[rows])  # (d, M)
        a_bar, b_bar = torch.exp(dt * a), (torch.exp(dt * a) - 1) / a  # zero-order hold
        c = torch.view_as_complex(layer.c[rows].contiguous())  # (d, M)
        state = torch.zeros(*u.shape[:2], a.shape[-1], dtype=a.dtype)  # (N, d, M)
        ys = []
        for step in range(u.shape[-1]):
            state = a_bar * state + b_bar * u[..., step, None]
            ys.append(2 * (c * state).sum(-1).real)  # (N, d)
        return torch.stack(ys, dim=-1)  # (N, d, L)

    u = h.transpose(1, 2)  # (N, d, L)
    forwards, backwards = slice(0, d_model), slice(d_model, 2 * d_model)
    y = scan(u, forwards) + scan(u.flip(-1), backwards).flip(-1) + layer.skip[:, None] * u
    with torch.no_grad():
        torch.testing.assert_close(layer(h), layer.out(y.transpose(1, 2)), atol=1e-5, rtol=1e-4)


def test_unknown_backbone_lists_known_names():
    with pytest.raises(PerturbFlowError) as info:
        get_backbone("no-such-backbone")
    for name in NAMES:
        assert name in str(info.value)


def test_duplicate_registration_is_an_error():
    name = "_test_duplicate"

    class First(nn.Module):
        """First."""

    class Second(nn.Module):
        """Second."""

    try:
        register_backbone(name)(First)
        with pytest.raises(ValueError, match="already registered"):
            register_backbone(name)(Second)
        assert get_backbone(name) is First
    finally:
        _BACKBONES.pop(name, None)
    assert name not in list_backbones()
