"""Stage 2 training: a fresh latent flow fitted on (perturbation, context) groups with Lightning."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader

from perturbflow.data import Group, PairedSetDataset
from perturbflow.flow import FlowEnsemble, LatentFlowModule
from perturbflow.train._checkpoints import RecordedDraws, Stage, stage_trainer_kwargs
from perturbflow.train._plan import FlowTrainingPlan

FLOW_WEIGHTS = "flow.pt"  # of a finished flow stage
ENSEMBLE_SEED_STRIDE = 10_000  # member k of a flow ensemble is fitted from seed + k * this


@dataclass(frozen=True)
class EMAUpdate:
    """The exponential moving average of torch's ``get_ema_multi_avg_fn``, as an object that
    pickles.

    ``strategy="ddp_spawn"`` pickles the trainer's callbacks into the processes it starts, and
    Lightning's ``EMAWeightAveraging`` holds torch's update as a closure, which does not pickle.
    ``WeightAveraging(multi_avg_fn=EMAUpdate(decay))`` updates after every optimizer step, as
    ``EMAWeightAveraging(decay=decay)`` does, with one foreach ``lerp`` over all parameters of
    a device and dtype (8x faster on the CPU than a Python loop over the parameters).
    """

    decay: float

    @torch.no_grad()
    def __call__(self, ema_params: list[torch.Tensor], current_params: list[torch.Tensor], num_averaged) -> None:
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, current_params, 1 - self.decay)
        else:  # integer buffers (none in the flow today) follow the same average, rounded down
            for ema, current in zip(ema_params, current_params, strict=True):
                ema.copy_(self.decay * ema + (1 - self.decay) * current)


def ema_callbacks(config) -> list:
    """Lightning's weight averaging of the flow with ``config.ema_decay`` (none when 0), as a
    list of trainer callbacks; picklable, so ``ddp_spawn`` can carry it (see :class:`EMAUpdate`)."""
    if config.ema_decay <= 0:
        return []
    from lightning.pytorch.callbacks import WeightAveraging

    return [WeightAveraging(multi_avg_fn=EMAUpdate(config.ema_decay))]


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


def build_model_flow(config, n_atoms: int) -> LatentFlowModule | FlowEnsemble:
    """A model's untrained flow: one module, or an ensemble of ``config.flow_ensemble``."""
    if config.flow_ensemble == 1:
        return build_flow(config, n_atoms)
    return FlowEnsemble([build_flow(config, n_atoms) for _ in range(config.flow_ensemble)])


def fit_flows(config, n_atoms: int, train_groups: list[Group], val_groups: list[Group], seed: int = 0,
              stage_of=lambda name: None, **fit) -> LatentFlowModule | FlowEnsemble:
    """The model's flow fitted by :func:`fit_flow`: one, or ``config.flow_ensemble`` members,
    member ``k`` from ``seed + ENSEMBLE_SEED_STRIDE * k`` in the run's stage ``flow`` (the
    first) or ``flow_k`` (``stage_of`` gives a stage by name)."""
    members = [
        fit_flow(config, n_atoms, train_groups, val_groups, seed=seed + ENSEMBLE_SEED_STRIDE * k,
                 stage=stage_of("flow" if k == 0 else f"flow_{k}"), **fit)
        for k in range(config.flow_ensemble)
    ]
    return members[0] if len(members) == 1 else FlowEnsemble(members)


def flow_trainer(accelerator, devices, strategy, precision, progress_bar: bool, callbacks: list,
                 **limits) -> pl.Trainer:
    """The Lightning trainer of a flow fit (the flow, and its reflow): no logger, no
    Lightning checkpoints (a run's come from its stage), ``precision=None`` for Lightning's
    default; ``limits`` are the fit's step, epoch and validation bounds."""
    return pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        **({} if precision is None else {"precision": precision}),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        callbacks=callbacks,
        **limits,
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
    stage: Stage | None = None,
    strategy: str = "auto",
    precision: str | int | None = None,
) -> LatentFlowModule:
    """Train a fresh latent flow on ``train_groups`` (validated on ``val_groups``, if any).

    Each step draws ``flow_batch_size`` sets of ``set_size`` control latents paired with as
    many perturbed latents of one group (see :class:`~perturbflow.data.PairedSetDataset`);
    the weights are averaged by Lightning's EMA callback when ``ema_decay > 0``.

    With ``stage`` (the ``flow`` stage of a :class:`~perturbflow.train.TrainingRun`), the
    fit writes checkpoints and resumes from the stage's last one; a stage already finished
    is loaded, not trained again.

    ``accelerator``, ``devices``, ``strategy`` and ``precision`` (``None``: Lightning's
    default, 32-bit) go to the Lightning trainer. On several devices (``strategy="ddp"``)
    each process draws its own sets (see :class:`~perturbflow.data.PairedSetDataset`), an
    epoch's ``flow_steps_per_epoch * flow_batch_size`` sets are shared out between the
    processes, and every process ends with the same weights.

    Returns
    -------
    The trained module, on the CPU, in eval mode.
    """
    if stage is not None and stage.finished:
        return stage.restore(lambda path: load_flow(config, n_atoms, path / FLOW_WEIGHTS))
    flow = build_flow(config, n_atoms)
    n_items = config.flow_steps_per_epoch * config.flow_batch_size
    dataset = PairedSetDataset(z_all, train_groups, stats, config.set_size, n_items, config.coupling, seed)
    # the generators' states are kept, so that a checkpoint can put them back
    datasets = {"train": RecordedDraws(dataset, config.flow_batch_size)}
    loaders = {"train_dataloaders": DataLoader(datasets["train"], batch_size=config.flow_batch_size,
                                               sampler=datasets["train"].sampler)}
    if val_groups:
        val_set = PairedSetDataset(
            z_all, val_groups, stats, config.set_size, 4 * config.flow_batch_size, config.coupling, seed + 1
        )
        datasets["val"] = RecordedDraws(val_set, config.flow_batch_size)
        loaders["val_dataloaders"] = DataLoader(datasets["val"], batch_size=config.flow_batch_size)
    callbacks = ema_callbacks(config)
    stage_kwargs = stage_trainer_kwargs(stage, "stage 2: flow", progress_bar, datasets)
    callbacks += stage_kwargs.pop("callbacks")  # after the EMA: a checkpoint holds each step's average
    ckpt_path = stage_kwargs.pop("ckpt_path", None)
    trainer = flow_trainer(
        accelerator, devices, strategy, precision, progress_bar, callbacks,
        max_epochs=max_epochs or config.flow_max_epochs, limit_val_batches=1.0 if val_groups else 0,
    )
    with warnings.catch_warnings():
        # the loader is resumable: StepCheckpoint puts it back where the checkpoint was taken
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
        trainer.fit(FlowTrainingPlan(flow, lr=config.flow_lr), ckpt_path=ckpt_path, **loaders)
    flow = flow.cpu().eval()
    if stage is not None:
        stage.finish(lambda path: torch.save(flow.state_dict(), path / FLOW_WEIGHTS))
    return flow


def load_flow(config, n_atoms: int, path: Path) -> LatentFlowModule:
    """A flow as ``config`` describes it, with the weights saved in the file ``path``."""
    flow = build_flow(config, n_atoms)
    flow.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return flow.eval()
