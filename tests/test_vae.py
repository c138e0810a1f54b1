"""The count VAE wrapper: rounding of decoded counts and the scvi-tools likelihood it uses."""

from __future__ import annotations

import numpy as np
import pytest

from perturbflow.nn._vae import log_space_round, systematic_round_up


def test_log_space_round_is_unbiased_on_the_log_scale():
    rng = np.random.default_rng(0)
    scale = np.full((200_000, 1), 0.8)
    target = np.full((200_000, 3), [0.15, 0.9, 2.3])
    expected = np.expm1(target) / scale
    n = log_space_round(expected, target, scale, rng)
    assert np.all(n == np.round(n)) and np.all(n >= np.floor(expected)) and np.all(n <= np.floor(expected) + 1)
    assert np.log1p(n * scale).mean(0) == pytest.approx(target[0], abs=3e-3)
    plain = np.floor(expected) + (rng.random(expected.shape) < expected - np.floor(expected))
    assert np.log1p(plain * scale).mean(0)[0] < target[0, 0] - 0.02  # what plain rounding would lose


def test_systematic_rounding_keeps_each_probability_and_every_group_sum():
    rng = np.random.default_rng(1)
    p = rng.random((50, 4))
    ups = np.mean([systematic_round_up(p, rng) for _ in range(20_000)], axis=0)
    assert np.allclose(ups, p, atol=0.02)  # each cell's own probability
    one = systematic_round_up(p, rng)
    for start, stop in [(0, 50), (3, 17), (20, 49)]:  # any run of consecutive cells
        assert abs(one[start:stop].sum(0) - p[start:stop].sum(0)).max() < 1 + 1e-9


def test_decoder_is_scvi_negative_binomial(trained_model):
    import torch
    from scvi.distributions import NegativeBinomial

    px = trained_model.vae.distribution(torch.zeros(4, 8), torch.full((4,), 1000.0))
    assert isinstance(px, NegativeBinomial)
    assert torch.allclose(px.mean.sum(-1), torch.full((4,), 1000.0), rtol=1e-4)


def test_fast_paths_match_scvi_tools(trained_model, controls):
    import torch

    from perturbflow.data import get_counts

    vae = trained_model.vae
    x = torch.as_tensor(get_counts(controls, None)[:50].toarray(), dtype=torch.float32)
    qz = vae.module.inference(x, batch_index=torch.zeros(50, 1, dtype=torch.long))["qz"]
    assert torch.allclose(vae.encode_mean(x), qz.loc, atol=1e-5)
    px = vae.distribution(qz.loc, x.sum(-1))
    assert torch.allclose(vae.log_expression(qz.loc), torch.log1p(1e4 * px.mean / x.sum(-1, keepdim=True)), atol=1e-4)


def test_torch_rounding_is_log_space_round_with_the_same_draws():
    import torch

    from perturbflow.nn._vae import _csr, _log_space_round_torch

    rng = np.random.default_rng(3)
    scale = rng.uniform(0.5, 3, (300, 1))
    target = rng.uniform(0, 4, (300, 40))
    expected = np.expm1(target) / scale
    reference = log_space_round(expected, target, scale, np.random.default_rng(7))
    u = torch.from_numpy(np.random.default_rng(7).random(40))  # the draws log_space_round makes
    fast = _log_space_round_torch(*(torch.as_tensor(a, dtype=torch.float32) for a in (expected, target, scale)), u)
    assert np.mean(fast.numpy() != reference) < 1e-3  # float32 against float64 at the boundaries
    assert np.abs(fast.numpy().sum(0) - reference.sum(0)).max() <= 1
    assert (_csr(fast).toarray() == fast.numpy()).all()
