"""Several latent flows fitted from different seeds, transporting as one (bagging)."""

from __future__ import annotations

import torch
from torch import nn

from perturbflow.flow._module import LatentFlowModule
from perturbflow.flow._transport import Transports


class FlowEnsemble(Transports, nn.Module):
    """Flows fitted on the same groups from different seeds; a set is carried by the mean of
    their velocities.

    Each fit's own error (its initialisation, the sets it drew) is independent of the others',
    so the mean velocity keeps what they agree on and averages out what they do not: the
    variance of the transported mean falls as ``1 / K`` for ``K`` members (Breiman 1996,
    bagging). It transports as :class:`LatentFlowModule` does.
    """

    def __init__(self, members: list[LatentFlowModule]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def conditioned_velocity(self, atoms: torch.Tensor, context: torch.Tensor, prior: torch.Tensor,
                             new_context: bool = False):
        """The members' mean velocity ``(x_t, t) -> v_t`` under the condition."""
        fields = [m.conditioned_velocity(atoms, context, prior, new_context) for m in self.members]
        return lambda x_t, t: torch.stack([field(x_t, t) for field in fields]).mean(0)
