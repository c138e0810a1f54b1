"""Stage 2 training: a fresh latent flow fitted on (perturbation, context) groups with Lightning."""

from __future__ import annotations

from dataclasses import dataclass

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from perturbflow.data import Group, PairedSetDataset
from perturbflow.flow import LatentFlowModule
from perturbflow.train._plan import FlowTrainingPlan


@dataclass(frozen=True)
class EMAUpdate:
    """The exponential moving average of torch's ``get_ema_avg_fn``, as an object that pickles.

    ``strategy="ddp_spawn"`` pickles the trainer's callbacks into the processes it starts, and
    Lightning's ``EMAWeightAveraging`` holds torch's update as a closure, which does not pickle.
    ``WeightAveraging(avg_fn=EMAUpdate(decay))`` updates after every optimizer step, as
    ``EMAWeightAveraging(decay=decay)`` does.
    """

    decay: float

    @torch.no_grad()
    def __call__(self, ema_param: torch.Tensor, current_param: torch.Tensor, num_averaged) -> torch.Tensor:
        return self.decay * ema_param + (1 - self.decay) * current_param


def build_flow(config, n_atoms: int) -> LatentFlowModule:
    """An untrained flow module as ``config`` (a ``PerturbFlowConfig``) describes it."""
    return LatentFlowModule(
        n_latent=config.n_latent,
        n_atoms=n_atoms,
        backbone=config.backbone,
        n_embed=config.n_embed,
        backbone_kwargs=config.backbone_kwargs,
        residual_prior=config.residual_prior,
        atom_pooling=config.atom_pooling,
        context_dropout=config.context_dropout,
    )


def fit_flow(
    config,
    n_atoms: int,
    train_groups: list[Group],
    val_groups: list[Group],
    z_all: np.ndarray,
    stats: np.ndarray,
    max_epochs: int | None = None,
    accelerator: str = "auto",
    devices: int | str = "auto",
    seed: int = 0,
    progress_bar: bool = True,
    strategy: str = "auto",
    precision: str | int | None = None,
) -> LatentFlowModule:
    """Train a fresh latent flow on ``train_groups`` (validated on ``val_groups``, if any).

    Each step draws ``flow_batch_size`` sets of ``set_size`` control latents paired with as
    many perturbed latents of one group (see :class:`~perturbflow.data.PairedSetDataset`);
    the weights are averaged by Lightning's EMA callback when ``ema_decay > 0``.

    ``accelerator``, ``devices``, ``strategy`` and ``precision`` (``None``: Lightning's
    default, 32-bit) go to the Lightning trainer. On several devices (``strategy="ddp"``)
    each process draws its own sets (see :class:`~perturbflow.data.PairedSetDataset`), an
    epoch's ``flow_steps_per_epoch * flow_batch_size`` sets are shared out between the
    processes, and every process ends with the same weights.

    Returns
    -------
    The trained module, on the CPU, in eval mode.
    """
    flow = build_flow(config, n_atoms)
    n_items = config.flow_steps_per_epoch * config.flow_batch_size
    dataset = PairedSetDataset(z_all, train_groups, stats, config.set_size, n_items, config.coupling, seed)
    loaders = {"train_dataloaders": DataLoader(dataset, batch_size=config.flow_batch_size)}
    if val_groups:
        val_set = PairedSetDataset(
            z_all, val_groups, stats, config.set_size, 4 * config.flow_batch_size, config.coupling, seed + 1
        )
        loaders["val_dataloaders"] = DataLoader(val_set, batch_size=config.flow_batch_size)
    callbacks = []
    if config.ema_decay > 0:
        from lightning.pytorch.callbacks import WeightAveraging

        callbacks.append(WeightAveraging(avg_fn=EMAUpdate(config.ema_decay)))
    trainer = pl.Trainer(
        max_epochs=max_epochs or config.flow_max_epochs,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        **({} if precision is None else {"precision": precision}),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        callbacks=callbacks,
        limit_val_batches=1.0 if val_groups else 0,
    )
    trainer.fit(FlowTrainingPlan(flow, lr=config.flow_lr), **loaders)
    return flow.cpu().eval()
