"""An ensemble of flows carries sets by the mean of its members' velocities, and a model with
one trains, predicts, saves and loads like a model with a single flow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import perturbflow as pf
from perturbflow._errors import PerturbFlowError
from perturbflow.flow import FlowEnsemble, LatentFlowModule


def _flow(seed: int) -> LatentFlowModule:
    torch.manual_seed(seed)
    flow = LatentFlowModule(n_latent=4, n_atoms=3, n_embed=8, residual_prior=True)
    for p in flow.parameters():  # leave adaLN-Zero's zero start: members must differ
        torch.nn.init.normal_(p, std=0.3)
    return flow.eval()


def test_one_euler_step_moves_by_the_mean_velocity():
    a, b = _flow(0), _flow(1)
    x_0 = torch.randn(2, 5, 4)
    atoms, context, prior = torch.tensor([[1], [2]]), torch.randn(2, 8), torch.randn(2, 4)
    ends = [f.transport(x_0, atoms, context, prior, n_steps=1, solver="euler") for f in (a, b)]
    assert not torch.allclose(ends[0], ends[1])
    both = FlowEnsemble([a, b]).transport(x_0, atoms, context, prior, n_steps=1, solver="euler")
    torch.testing.assert_close(both, (ends[0] + ends[1]) / 2)
    # one member is that member; under the null context too
    for new_context in (False, True):
        torch.testing.assert_close(
            FlowEnsemble([a]).transport(x_0, atoms, context, prior, n_steps=3, new_context=new_context),
            a.transport(x_0, atoms, context, prior, n_steps=3, new_context=new_context),
        )


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_the_number_of_members_is_checked(bad):
    with pytest.raises(PerturbFlowError, match="flow_ensemble"):
        pf.PerturbFlowConfig(flow_ensemble=bad)


def test_a_model_with_two_flows_predicts_saves_and_loads(synthetic_adata, controls, tmp_path):
    model = pf.PerturbFlow(synthetic_adata, n_latent=8, flow_steps_per_epoch=10, flow_ensemble=2)
    model.train(max_epochs=5, progress_bar=False)
    assert isinstance(model.flow, FlowEnsemble) and len(model.flow.members) == 2
    first, second = (torch.cat([p.flatten() for p in m.parameters()]) for m in model.flow.members)
    assert not torch.allclose(first, second)  # fitted from different seeds
    pred = model.predict(controls, perturbations=["G0"], seed=0)
    model.save(tmp_path / "model")
    again = pf.PerturbFlow.load(tmp_path / "model").predict(controls, perturbations=["G0"], seed=0)
    np.testing.assert_allclose(again.layers["expected"], pred.layers["expected"], rtol=1e-5, atol=1e-5)
