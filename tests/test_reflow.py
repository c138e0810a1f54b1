"""Reflow: couplings made by the trained flow, and a fine-tuned copy."""

from __future__ import annotations

import numpy as np
import torch

from perturbflow.data import Group
from perturbflow.models import PerturbFlowConfig
from perturbflow.train import build_flow, flow_couplings, reflow


def _setup():
    config = PerturbFlowConfig(n_latent=4, n_embed=8, set_size=4, flow_batch_size=2, ema_decay=0.0,
                               backbone_kwargs={"d_model": 16, "depth": 1})
    torch.manual_seed(0)
    flow = build_flow(config, n_atoms=2)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(40, 4)).astype(np.float32)
    stats = rng.normal(size=(1, 8)).astype(np.float32)
    groups = [Group("G1", 0, np.array([1]), np.arange(20, 30), np.arange(20), np.full(4, 0.5, np.float32)),
              Group("G2", 0, np.array([2]), np.arange(30, 40), np.arange(20), np.zeros(4, np.float32))]
    return config, flow, z, stats, groups


def test_couplings_are_the_flow_end_points():
    config, flow, z, stats, groups = _setup()
    sets = flow_couplings(flow, groups, z, stats, config.set_size, n_steps=3, solver="euler", n_sets=2)
    assert len(sets) == 4 and sets[0]["x_0"].shape == (4, 4)
    # the untrained flow is the prior's constant velocity: x_1 = x_0 + prior
    assert torch.allclose(sets[0]["x_1"], sets[0]["x_0"] + 0.5, atol=1e-5)
    assert torch.allclose(sets[3]["x_1"], sets[3]["x_0"], atol=1e-5)


def test_reflow_returns_a_trained_copy():
    config, flow, z, stats, groups = _setup()
    before = [p.clone() for p in flow.parameters()]
    student = reflow(flow, config, groups, z, stats, max_steps=3, accelerator="cpu", devices=1, progress_bar=False)
    assert student is not flow and not student.training
    assert all(torch.equal(a, b) for a, b in zip(before, flow.parameters()))  # the teacher is unchanged
    assert any(not torch.equal(a, b) for a, b in zip(flow.parameters(), student.parameters()))
