"""Reflow: a second rectification of the latent flow on its own couplings (Liu et al. 2022)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from perturbflow.data import Group
from perturbflow.data._pairing import pad_atoms
from perturbflow.flow import LatentFlowModule
from perturbflow.train._fit_flow import ema_callbacks, flow_trainer
from perturbflow.train._plan import FlowTrainingPlan

REFLOW_SETS = 4  # sets of control cells per group carried by the trained flow to make the couplings


class CouplingDataset(Dataset):
    """Sets of ``(x_0, x_1)`` pairs where ``x_1`` is the trained flow's end point of ``x_0``.

    Each item is one of the sets the flow carried together (the set-transformer's velocity
    depends on the whole set, so the sets are kept as they were moved), drawn uniformly.
    """

    def __init__(self, sets: list[dict[str, torch.Tensor]], n_items: int, seed: int = 0):
        self.sets = sets
        self.n_items = n_items
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.n_items

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.sets[self.rng.integers(len(self.sets))]


@torch.no_grad()
def flow_couplings(
    flow: LatentFlowModule,
    groups: list[Group],
    z_all: np.ndarray,
    stats: np.ndarray,
    set_size: int,
    n_steps: int = 20,
    solver: str = "midpoint",
    n_sets: int = REFLOW_SETS,
    seed: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """``n_sets`` sets of ``set_size`` control latents per group and where the flow carries them.

    Returns
    -------
    One dict per set with ``x_0``, ``x_1`` ``(S, D)``, ``atoms``, ``context`` and ``prior``, as
    :class:`~perturbflow.data.PairedSetDataset` gives them.
    """
    rng = np.random.default_rng(seed)
    flow = flow.eval()
    atoms = pad_atoms([g.atom_ids for g in groups])
    out = []
    for g, group in enumerate(groups):
        src = rng.choice(group.source_idx, n_sets * set_size, replace=len(group.source_idx) < n_sets * set_size)
        x_0 = torch.from_numpy(z_all[src].astype(np.float32)).view(n_sets, set_size, -1)  # (B, S, D)
        atom_t = torch.from_numpy(atoms[g]).expand(n_sets, -1)  # (B, A)
        context = torch.from_numpy(stats[group.context].astype(np.float32)).expand(n_sets, -1)  # (B, 2D)
        prior = torch.from_numpy(group.prior.astype(np.float32))  # (D,)
        x_1 = flow.transport(x_0, atom_t, context, prior.expand(n_sets, -1), n_steps=n_steps, solver=solver)
        for b in range(n_sets):
            out.append({"x_0": x_0[b], "x_1": x_1[b], "atoms": torch.from_numpy(atoms[g]),
                        "context": context[b], "prior": prior})
    return out


def reflow(
    flow: LatentFlowModule,
    config,
    groups: list[Group],
    z_all: np.ndarray,
    stats: np.ndarray,
    max_steps: int,
    accelerator: str = "auto",
    devices: int | str = "auto",
    seed: int = 0,
    progress_bar: bool = True,
    strategy: str = "auto",
    precision: str | int | None = None,
) -> LatentFlowModule:
    """Fine-tune a copy of ``flow`` on its own couplings (one reflow, Liu et al. 2022, sec. 2.2).

    The trained flow carries control latents of every group to its end points with the
    model's solver (``config.n_steps`` steps of ``config.solver``); the copy is then trained
    with the same rectified-flow loss on those deterministic pairs, whose straight
    interpolations no longer cross, so its paths straighten and few steps suffice.

    Parameters
    ----------
    flow
        The trained flow (left unchanged).
    config
        The model's ``PerturbFlowConfig`` (set size, solver, batch size, learning rate, EMA).
    groups
        The groups the flow was fitted on.
    z_all, stats
        Latents of all cells and the context statistics, as the flow was fitted with.
    max_steps
        Fine-tuning steps.
    accelerator, devices, strategy, precision
        As the flow was fitted with; they go to the Lightning trainer.

    Returns
    -------
    The fine-tuned copy, on the CPU, in eval mode.
    """
    sets = flow_couplings(flow, groups, z_all, stats, config.set_size, config.n_steps, config.solver, seed=seed)
    student = copy.deepcopy(flow).train()
    dataset = CouplingDataset(sets, max_steps * config.flow_batch_size, seed)
    callbacks = ema_callbacks(config)
    trainer = flow_trainer(accelerator, devices, strategy, precision, progress_bar, callbacks,
                           max_steps=max_steps, max_epochs=1, limit_val_batches=0)
    trainer.fit(FlowTrainingPlan(student, lr=config.flow_lr), DataLoader(dataset, batch_size=config.flow_batch_size))
    return student.cpu().eval()
