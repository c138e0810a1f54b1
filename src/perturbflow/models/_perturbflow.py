"""PerturbFlow: the user-facing model (count VAE + latent rectified flow)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from perturbflow._distributed import is_global_zero
from perturbflow._errors import PerturbFlowError
from perturbflow.data import (
    context_labels,
    get_counts,
    get_registry,
    log_normalized_mean,
    perturbation_atoms,
    setup_anndata,
    split_labels,
)
from perturbflow.flow import LatentFlowModule
from perturbflow.metrics._likelihood import DISPERSION_KEY
from perturbflow.models._config import PerturbFlowConfig
from perturbflow.models._device import modules_on, prediction_device
from perturbflow.models._inputs import aligned_counts, control_cells, requested_perturbations
from perturbflow.models._persistence import read_model, write_model
from perturbflow.models._prior import BaselinePrior
from perturbflow.models._transfer import ContextTransfer
from perturbflow.nn import CountVAE, context_statistics
from perturbflow.train import (
    DEFAULT_EVERY_N_STEPS,
    apply_part,
    build_groups,
    calibration_split,
    cells_by_group,
    choose_correction_scale,
    choose_new_context_parts,
    contexts_to_hold_out,
    count_statistics,
    decoded_shifts,
    digest,
    fit_flow,
    fit_vae,
    nearest_context,
    open_run,
    reflow,
)

logger = logging.getLogger(__name__)

TRANSPORT_SETS = 64  # sets of control cells moved in one forward pass


class PerturbFlow:
    """Predict single-cell perturbation responses with a latent rectified flow.

    Stage 1 fits a count VAE (scvi-tools, negative-binomial likelihood) on all training
    cells. Stage 2 learns a rectified flow in its latent space that carries control cells
    of a context to the perturbed cells of that context, conditioned on the perturbation
    (a set of atoms) and the context (its own control cells). Prediction moves control
    cells along the flow and decodes them back to counts.

    Parameters
    ----------
    adata
        AnnData set up with :meth:`setup_anndata`.
    backbone
        Name of the velocity backbone: ``"mlp"``, ``"dit"``, ``"settransformer"``, ``"ssm"``.
    **kwargs
        Other fields of :class:`~perturbflow.models.PerturbFlowConfig`.

    Examples
    --------
    >>> import perturbflow as pf
    >>> adata = pf.datasets.synthetic()
    >>> pf.PerturbFlow.setup_anndata(adata, perturbation_key="perturbation",
    ...                              control_value="control", context_keys=["cell_type"])
    >>> model = pf.PerturbFlow(adata)
    >>> model.train()
    >>> pred = model.predict(adata[adata.obs.perturbation == "control"], perturbations=["G0+G1"])
    """

    def __init__(self, adata: AnnData | None, backbone: str = "mlp", **kwargs):
        from perturbflow.backbones import get_backbone

        get_backbone(backbone)
        unknown = set(kwargs) - set(PerturbFlowConfig.__dataclass_fields__)
        if unknown:
            raise PerturbFlowError(f"unknown PerturbFlow arguments: {', '.join(sorted(unknown))}")
        self.config = PerturbFlowConfig(backbone=backbone, **kwargs)
        self.is_trained = False
        self.vae: CountVAE | None = None
        self.flow: LatentFlowModule | None = None
        self.adata = adata
        if adata is None:  # filled by load()
            return
        self.registry = get_registry(adata)
        self.genes = adata.var_names.astype(str).tolist()
        split = split_labels(adata, self.registry)
        atoms = perturbation_atoms(adata, self.registry)
        fit_mask = split != "test"
        self.atoms = sorted({a for s, m in zip(atoms, fit_mask) if m for a in s})
        self.contexts = sorted(set(context_labels(adata, self.registry.context_keys)[fit_mask]))
        self.context_stats: dict[str, list[float]] = {}
        self.flow_contexts: list[str] = []  # contexts with perturbed cells in the flow's fit
        self.new_context_parts: dict[str, str] = {}  # held-out context -> its part, for "auto"

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        perturbation_key: str = "perturbation",
        control_value: str = "control",
        layer: str | None = None,
        context_keys: Sequence[str] | str | None = None,
        split_key: str | None = None,
    ) -> None:
        """Validate ``adata`` and record the keys perturbflow uses.

        Parameters
        ----------
        adata
            AnnData of raw counts (sparse or dense), in ``X`` or in ``layers[layer]``.
        perturbation_key
            Column of ``obs`` with the perturbation labels (``A``, ``A+B``, ``A+ctrl``, ...).
        control_value
            Label of the control cells in that column.
        layer
            Layer holding the counts; ``None`` uses ``X``.
        context_keys
            Columns of ``obs`` that define a context (cell type, cell line, donor, ...).
        split_key
            Column of ``obs`` with ``train`` / ``val`` / ``test``; ``test`` cells are never fitted.

        Returns
        -------
        ``None``; writes the registry to ``adata.uns['perturbflow']``.
        """
        setup_anndata(
            adata,
            perturbation_key=perturbation_key,
            control_value=control_value,
            layer=layer,
            context_keys=list(context_keys) if not isinstance(context_keys, str | None) else context_keys,
            split_key=split_key,
        )

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        accelerator: str = "auto",
        devices: int | str = "auto",
        flow_max_epochs: int | None = None,
        batch_size: int = 128,
        seed: int = 0,
        progress_bar: bool = True,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every_n_steps: int = DEFAULT_EVERY_N_STEPS,
        resume: bool = False,
        strategy: str = "auto",
        precision: str | int | None = None,
    ) -> None:
        """Fit the count VAE (stage 1), then the latent flow (stage 2).

        Parameters
        ----------
        max_epochs
            Epochs of both stages; ``None`` picks them from the data size (the VAE follows
            scvi-tools' heuristic, the flow trains for about 2000 steps).
        accelerator, devices
            Passed to the Lightning trainers (GPU and multi-GPU come from Lightning).
        flow_max_epochs
            Epochs of the flow alone, overriding ``max_epochs`` for stage 2.
        batch_size
            Cells per minibatch of the VAE.
        seed
            Random seed of both stages.
        progress_bar
            Show a progress bar per stage, with the time left.
        checkpoint_dir
            Folder for the run's checkpoints (Lightning's, every ``checkpoint_every_n_steps``
            training steps of each stage, and each finished stage), so that an interrupted run
            can resume; it must not hold another run's. ``None``: no checkpoints.
        checkpoint_every_n_steps
            Training steps between two checkpoints of a stage.
        resume
            Continue the interrupted run whose checkpoints ``checkpoint_dir`` holds, with the
            same data and arguments: a finished stage is loaded, the stage in progress
            continues from its last checkpoint with the random states saved in it.
        strategy
            Lightning's strategy for both stages, e.g. ``"ddp"`` with ``devices=4`` for data
            parallel training on 4 GPUs (scvi-tools then shares the VAE's cells, and
            perturbflow the flow's sets, out between the processes). With ``"ddp"`` Lightning
            runs the calling script once per device, so run it as a script (not in a notebook):
            every process ends ``train`` with the same model, and :meth:`save` writes only
            from rank 0. (``"ddp_spawn"`` works too, but starts new processes for each stage.)
        precision
            Lightning's precision for both stages, e.g. ``"bf16-mixed"`` (bfloat16 autocast) on
            a GPU; ``None`` keeps Lightning's default (32-bit).
        """
        if self.adata is None:
            raise PerturbFlowError("this model was loaded without training data; it can only predict")
        adata, reg = self.adata, self.registry
        split = split_labels(adata, reg)
        fit_mask = split != "test"
        contexts = context_labels(adata, reg.context_keys)
        atoms = perturbation_atoms(adata, reg)

        settings = {"seed": seed, "max_epochs": max_epochs, "flow_max_epochs": flow_max_epochs,  # a resume matches
                    "batch_size": batch_size, "config": self.config.to_dict(), "genes": digest(self.genes),
                    "n_fit": int(fit_mask.sum())}
        run = open_run(checkpoint_dir, settings, resume, checkpoint_every_n_steps)
        pl.seed_everything(seed, workers=True, verbose=False)
        start = time.perf_counter()
        logger.info("stage 1: count VAE on %d cells x %d genes", int(fit_mask.sum()), adata.n_vars)
        self.vae = fit_vae(
            get_counts(adata, reg.layer),
            np.flatnonzero(fit_mask),
            self.genes,
            self.config,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            batch_size=batch_size,
            progress_bar=progress_bar,
            seed=seed,
            stage=run.stage("vae") if run else None,
            strategy=strategy,
            precision=precision,
        )
        elapsed = time.perf_counter() - start
        epochs = self.vae.epochs
        logger.info("stage 1 done in %.0f s (%.0f cells/s over %d epochs)", elapsed,
                    epochs * fit_mask.sum() / max(elapsed, 1e-9), epochs)
        start = time.perf_counter()
        z = self.vae.latent(get_counts(adata, reg.layer), np.flatnonzero(fit_mask))
        rows = np.flatnonzero(fit_mask)
        z_all = np.zeros((adata.n_obs, z.shape[1]), dtype=np.float32)
        z_all[rows] = z

        is_control = np.array([len(a) == 0 for a in atoms])
        control_rows = {c: np.flatnonzero(fit_mask & is_control & (contexts == c)) for c in self.contexts}
        control_rows = {c: r for c, r in control_rows.items() if len(r)}  # contexts the flow can start in
        self.context_stats = {c: context_statistics(torch.from_numpy(z_all[r])).tolist() for c, r in control_rows.items()}
        atom_index = {a: i + 1 for i, a in enumerate(self.atoms)}
        ctx_index = {c: i for i, c in enumerate(self.context_stats)}
        stats = np.array([self.context_stats[c] for c in ctx_index], dtype=np.float32)

        train_cells, val_cells = (
            cells_by_group(atoms, contexts, (split == part) & ~is_control, ctx_index, atom_index)
            for part in ("train", "val")
        )
        if not train_cells:
            raise PerturbFlowError("no perturbed training cells with control cells in the same context")
        # with the library sizes, in one pass over blocks of rows (the counts may be on disk)
        gene_shifts, control_means, noise, library = count_statistics(
            get_counts(adata, reg.layer), train_cells, fit_mask & is_control, contexts
        )
        sizes = {k: len(v) for k, v in train_cells.items()}
        transfer, self.transfer_scores = ContextTransfer.select(gene_shifts, sizes, control_means, noise)
        self.gene_prior = BaselinePrior(gene_shifts, sizes, transfer)
        latent_controls = {c: z_all[r].mean(0) for c, r in control_rows.items()}
        latent_shifts = {k: z_all[v].mean(0) - latent_controls[k[1]] for k, v in train_cells.items()}
        self.prior = BaselinePrior(latent_shifts, sizes, transfer)
        # what of each measured change the latent does not carry, moved between groups like
        # the shifts themselves and added back in gene space at prediction
        decoded = decoded_shifts(self.vae, z_all, library, latent_shifts, control_rows, seed)
        self.residual_prior = BaselinePrior({k: gene_shifts[k] - decoded[k] for k in gene_shifts}, sizes, transfer)
        # every group with the baseline computed without it, as a held-out group would see it
        train_groups, val_groups = (
            build_groups(cells, self.prior, atom_index, ctx_index, control_rows) for cells in (train_cells, val_cells)
        )
        fit_groups = train_groups  # what the flow is fitted on; with flow_prior="own", from their own shifts
        if self.config.flow_prior == "own":
            fit_groups = build_groups(train_cells, self.prior, atom_index, ctx_index, control_rows, own_prior=True)
        logger.info("priors and groups in %.0f s", time.perf_counter() - start)
        start = time.perf_counter()
        logger.info("stage 2: latent flow on %d groups (%d validation)", len(train_groups), len(val_groups))

        fit = dict(z_all=z_all, stats=stats, max_epochs=flow_max_epochs or max_epochs, accelerator=accelerator,
                   devices=devices, seed=seed, progress_bar=progress_bar, stage=run.stage("flow") if run else None,
                   strategy=strategy, precision=precision)
        # The flow is fitted once. With a baseline prior, a fifth of the training groups
        # (or the validation groups) is held out of that fit and used to choose how much of
        # the flow's correction to keep, for this very network.
        # In a context new to the flow, what of its correction to apply is chosen on the
        # measured context nearest to each new one, held out of the fit whole.
        self.correction_scale = 1.0
        names = list(ctx_index)
        held_contexts = []
        if self.config.new_context_flow == "auto" and self.config.residual_prior and not self.config.centered_correction:
            measured = {names[g.context] for g in train_groups + val_groups}
            held_contexts = contexts_to_hold_out(
                {c: m for c, m in latent_controls.items() if c not in measured},
                {c: m for c, m in latent_controls.items() if c in measured},
            )
        calibration = []
        if self.config.residual_prior:
            calibration = val_groups or calibration_split(train_groups, seed, [ctx_index[c] for c in held_contexts])
        fitting = [f for f, g in zip(fit_groups, train_groups) if all(g is not c for c in calibration)] or fit_groups
        # the flow's correction is calibrated only in contexts whose perturbed cells it saw
        self.flow_contexts = sorted({names[g.context] for g in fitting})
        self.flow = fit_flow(self.config, len(self.atoms), fitting, val_groups, **fit)
        if self.config.reflow_steps:  # a second rectification on the flow's own couplings
            self.flow = reflow(self.flow, self.config, fitting, z_all, stats, self.config.reflow_steps,
                               accelerator=accelerator, devices=devices, seed=seed, progress_bar=progress_bar)
        elapsed = time.perf_counter() - start
        n_steps = self.config.flow_steps_per_epoch * (flow_max_epochs or max_epochs or self.config.flow_max_epochs)
        logger.info("stage 2 done in %.0f s (%.0f cells/s over %d steps)", elapsed,
                    n_steps * self.config.flow_batch_size * self.config.set_size / max(elapsed, 1e-9), n_steps)
        if calibration:

            def transport(z0, atom_ids, context, prior, new_context=False):
                stats_c, prior_t = torch.from_numpy(stats[context]), torch.from_numpy(prior)
                end = self._transport(
                    z0, atom_ids, stats_c, prior_t, self.config.n_steps, self.config.solver, False, new_context
                )[0]
                if self.config.centered_correction:  # as predict() applies it
                    end = end - (end - z0 - prior).mean(0)
                return end

            seen = [g for g in calibration if names[g.context] in self.flow_contexts] or calibration
            self.correction_scale = choose_correction_scale(transport, seen, z_all, seed)
            logger.info("correction scale chosen on %d held-out groups: %.2f", len(seen), self.correction_scale)
            if held_contexts:
                self.new_context_parts = choose_new_context_parts(
                    lambda *args: transport(*args, new_context=True),
                    [g for g in calibration if names[g.context] in held_contexts], z_all, names, seed,
                )
                logger.info("flow's correction in new contexts, chosen on held-out contexts: %s",
                            ", ".join(f"{c}: {p}" for c, p in self.new_context_parts.items()))
        self.flow = self.flow.cpu().eval()
        self.is_trained = True

    def correction_scale_in(self, context: str, mean: np.ndarray | None = None) -> float:
        """The fraction of the flow's correction applied in ``context``.

        The calibrated ``correction_scale`` where the flow was fitted on perturbed cells of
        the context. In a context new to the flow (a new cell type or line) the held-out
        groups of the calibration say nothing about how the correction carries over, so
        ``new_context_flow`` says what is applied there (the part of
        :meth:`correction_part_in`, whole; none where it is or resolves to ``"off"``: the
        prediction is then the context transfer's). Without a baseline prior
        (``residual_prior=False``) the flow is the whole prediction and is always applied.
        ``mean``: the mean control latent of the context, for a context the model was not
        trained with (``"auto"`` looks up the nearest held-out context with it).
        """
        if not self.config.residual_prior or context in self.flow_contexts:
            return self.correction_scale
        return 0.0 if self.new_context_choice(context, mean) == "off" else 1.0

    def correction_part_in(self, context: str, mean: np.ndarray | None = None) -> str:
        """Which part of the flow's correction is applied in ``context``: ``"all"``,
        ``"mean"`` (each cell moved by the mean correction of its predicted perturbation) or
        ``"shape"`` (the correction less that mean: the prior sets the group's mean move, the
        flow how each cell moves around it). ``"shape"`` everywhere with
        ``centered_correction``; in a context new to the flow, as ``new_context_flow`` says."""
        if self.config.centered_correction:
            return "shape"
        new = self.config.residual_prior and context not in self.flow_contexts
        choice = self.new_context_choice(context, mean) if new else "full"
        return choice if choice in ("mean", "shape") else "all"

    def new_context_choice(self, context: str, mean: np.ndarray | None = None) -> str:
        """What of the flow's correction ``new_context_flow`` applies in ``context`` if it is
        new to the flow: ``"off"``, ``"mean"``, ``"shape"`` or ``"full"``. With ``"auto"``,
        the choice made on the held-out measured context nearest to it (by the mean of the
        control latents; ``"off"`` when none was held out)."""
        if self.config.new_context_flow != "auto":
            return self.config.new_context_flow
        if context in self.new_context_parts:
            return self.new_context_parts[context]
        if mean is None and context in self.context_stats:
            stats = np.asarray(self.context_stats[context], dtype=np.float32)
            mean = stats[: len(stats) // 2]
        if mean is None or not self.new_context_parts:
            return "off"
        half = {c: np.asarray(self.context_stats[c], dtype=np.float32) for c in self.new_context_parts}
        near = nearest_context(np.asarray(mean), {c: v[: len(v) // 2] for c, v in half.items()})
        return self.new_context_parts[near]

    # ------------------------------------------------------------------ inputs
    def _check_trained(self) -> None:
        if not self.is_trained:
            raise PerturbFlowError("the model is not trained; call train() first")

    def get_latent_representation(self, adata: AnnData | None = None) -> np.ndarray:
        """Latent means ``E[z | x]`` of the cells of ``adata`` (the training data by default).

        Returns
        -------
        Array of shape ``(n_cells, n_latent)``.
        """
        self._check_trained()
        adata = self.adata if adata is None else adata
        if adata is None:
            raise PerturbFlowError("pass adata: this model was loaded without training data")
        counts = aligned_counts(adata, self.genes, self.registry.layer)
        return self.vae.latent(counts, np.arange(adata.n_obs))

    # ------------------------------------------------------------------ prediction
    def predict(
        self,
        control_adata: AnnData,
        perturbations: Sequence[str],
        n_steps: int | None = None,
        seed: int = 0,
        n_cells: int | None = None,
        solver: Literal["euler", "midpoint", "adaptive"] | None = None,
        return_path: bool = False,
        method: Literal["flow", "latent_shift"] = "flow",
        device: str | torch.device | None = None,
    ) -> AnnData:
        """Predict perturbed cells from control cells.

        Each control cell is encoded, carried along the flow under each perturbation, and
        decoded with its own library size.

        Parameters
        ----------
        control_adata
            Control cells (counts, same genes as training). If it holds a perturbation column,
            its control cells are used. Context columns name each cell's context; a context
            never seen in training is described by these control cells.
        perturbations
            Labels to predict, e.g. ``["KLF1+MAP2K6"]``. Every atom must have been seen.
        n_steps
            ODE steps (default: the model's ``n_steps``).
        seed
            Seed for choosing source cells and sampling counts.
        n_cells
            Cells per perturbation, drawn from the control cells with replacement; ``None`` gives
            one predicted cell per control cell.
        solver
            ``"euler"``, ``"midpoint"`` or ``"adaptive"`` (default: the model's).
        return_path
            Also store the latent flow paths in ``uns['perturbflow_paths']`` (steps, cells, latent).
        method
            ``"flow"``: the model's prediction. ``"latent_shift"``: a baseline, scGen's latent
            arithmetic with this model's VAE (each control latent plus the perturbation's mean
            latent shift in the other contexts, or the sum of its atoms' shifts, decoded and
            sampled at the cell's library size); no flow.
        device
            Where the VAE and the flow run for this prediction: ``None`` picks a CUDA device when
            torch sees one and the CPU otherwise, like scvi-tools' ``accelerator="auto"``;
            ``"cpu"``, ``"cuda"``, ``"cuda:1"``... choose. The modules go back to the CPU after it.

        Returns
        -------
        AnnData with sampled integer counts in ``X`` (genes in training order), the expected
        counts in ``layers['expected']``, the decoder's gene-wise NB inverse dispersion in
        ``var['nb_dispersion']``, the predicted latents in ``obsm['X_perturbflow']``,
        and in ``obs`` the perturbation label, the source cells' context columns and
        ``source_cell``.
        """
        self._check_trained()
        with modules_on(prediction_device(device), self.vae.module, self.flow):
            return self._predict(control_adata, perturbations, n_steps, seed, n_cells, solver, return_path, method)

    def _predict(self, control_adata, perturbations, n_steps, seed, n_cells, solver, return_path, method) -> AnnData:
        if method not in ("flow", "latent_shift"):
            raise PerturbFlowError(f"unknown method {method!r}; use 'flow' or 'latent_shift'")
        if return_path and method != "flow":
            raise PerturbFlowError("return_path needs method='flow'")
        requested = requested_perturbations(perturbations, self.atoms, self.registry)
        control_adata = control_cells(control_adata, self.registry)
        reg = self.registry
        for key in reg.context_keys:
            if key not in control_adata.obs.columns:
                raise PerturbFlowError(f"context key {key!r} not found in the control cells' obs")
        counts = aligned_counts(control_adata, self.genes, reg.layer)
        contexts = context_labels(control_adata, reg.context_keys)
        rng = np.random.default_rng(seed)
        z0_all = self.vae.latent(counts, np.arange(control_adata.n_obs))
        library = np.asarray(counts.sum(axis=1)).reshape(-1).astype(np.float32)
        if np.any(library <= 0):
            raise PerturbFlowError("some control cells have no counts; filter empty cells first")

        n_steps = n_steps or self.config.n_steps
        solver = solver or self.config.solver
        z_pred, src_rows, labels, paths = [], [], [], []
        z_ref, gene_shift, shift_of_rows = [], [], []
        applied: dict[str, float] = {}  # the share of the flow's correction kept, per context
        parts: dict[str, str] = {}  # which part of it: all, its mean, or its shape (less the mean)
        plain = self.plain_prior() if method == "latent_shift" else None
        described: dict[str, tuple[torch.Tensor, np.ndarray]] = {}
        from rich.progress import track

        for label, atom_set, atom_ids in track(requested, description="predicting", disable=len(requested) < 3):
            rows = np.arange(control_adata.n_obs) if n_cells is None else rng.choice(control_adata.n_obs, n_cells)
            for c in pd.unique(contexts[rows]):
                rows_c = rows[contexts[rows] == c]
                if c not in described:  # each context by its own control cells, latent and genes
                    ctrl_c = np.flatnonzero(contexts == c)
                    described[c] = (
                        context_statistics(torch.from_numpy(z0_all[ctrl_c])),
                        log_normalized_mean(counts[ctrl_c]).astype(np.float32),
                    )
                stats, ctrl_mean = described[c]
                if method == "latent_shift":
                    z_pred.append(z0_all[rows_c] + plain.prior(atom_set, c))
                    src_rows.append(rows_c)
                    labels += [label] * len(rows_c)
                    continue
                prior = self.prior.prior(atom_set, c, ctrl_mean)
                base = z0_all[rows_c] + prior if self.config.residual_prior else z0_all[rows_c]
                if self.config.gene_offset == "residual":  # each cell's own decoded change
                    gene_shift.append(self.residual_prior.prior(atom_set, c, ctrl_mean))
                    z_ref.append(z0_all[rows_c])
                else:  # the gene-space baseline, and the decoded change from its latent end point
                    gene_shift.append(self.gene_prior.prior(atom_set, c, ctrl_mean))
                    z_ref.append(base)
                mean_c = stats[: stats.shape[0] // 2].numpy()
                scale, part = self.correction_scale_in(c, mean_c), self.correction_part_in(c, mean_c)
                end, path = base, None  # no flow to run where none of its correction is kept
                if scale or return_path:
                    end, path = self._transport(
                        z0_all[rows_c], atom_ids, stats, torch.from_numpy(prior), n_steps, solver, return_path,
                        c not in self.flow_contexts,
                    )
                # the flow's move beyond the prior: all of it, its mean or its shape (less the mean)
                correction = apply_part(base, end, "full" if part == "all" else part) - base
                z_pred.append(base + scale * correction)
                applied[c] = scale
                parts[c] = part
                if self.config.gene_offset == "residual" and self.config.cell_response < 1:
                    # the group's mean decoded change in gene space, each cell's own part scaled
                    mean_change = self.vae.log_change(z0_all[rows_c], z_pred[-1], library[rows_c]).mean(0)
                    gene_shift[-1] = gene_shift[-1] + (1 - self.config.cell_response) * mean_change
                shift_of_rows.append(np.full(len(rows_c), len(gene_shift) - 1))
                paths.append(path)
                src_rows.append(rows_c)
                labels += [label] * len(rows_c)
        z_pred = np.concatenate(z_pred)
        src_rows = np.concatenate(src_rows)
        if self.config.decode == "delta" and method == "flow":
            X, expected = self.vae.decode_delta(
                np.concatenate(z_ref),
                z_pred,
                counts,
                src_rows,
                gene_shift=np.stack(gene_shift) if self.config.residual_prior else None,
                shift_of_rows=np.concatenate(shift_of_rows),
                seed=seed,
                change_scale=self.config.cell_response if self.config.gene_offset == "residual" else 1.0,
            )
        else:
            X, expected = self.vae.decode(z_pred, library[src_rows], seed=seed)

        obs = pd.DataFrame(index=[f"pred{i}" for i in range(len(src_rows))])
        obs[reg.perturbation_key] = pd.Categorical(labels)
        for key in reg.context_keys:
            obs[key] = control_adata.obs[key].to_numpy()[src_rows]
        obs["source_cell"] = control_adata.obs_names.to_numpy()[src_rows]
        pred = AnnData(X=X, obs=obs, var=pd.DataFrame(index=self.genes))
        pred.var[DISPERSION_KEY] = self.vae.dispersion()  # the decoder's NB theta, for evaluation
        pred.layers["expected"] = expected
        pred.obsm["X_perturbflow"] = z_pred
        pred.uns["perturbflow_prediction"] = {
            "n_steps": n_steps,
            "solver": solver,
            "seed": seed,
            "method": method,
            "backbone": self.config.backbone,
            "flow_correction": applied,
            "flow_correction_part": parts,
            "gene_offset": self.config.gene_offset if self.config.residual_prior else "none",
            "perturbation_key": reg.perturbation_key,
            "control_value": reg.control_value,
            "context_keys": list(reg.context_keys),
        }
        if return_path:
            pred.uns["perturbflow_paths"] = np.concatenate(paths, axis=1)
        return pred

    def plain_prior(self) -> BaselinePrior:
        """The latent shifts with plain transfer: the mean over the other contexts (scGen)."""
        return BaselinePrior(self.prior.shifts, self.prior.sizes, ContextTransfer(specificity=1.0))

    def _transport(self, z0: np.ndarray, atom_ids, stats, prior, n_steps, solver, return_path, new_context):
        """Move ``(n, D)`` latents in sets of ``set_size`` (the last set may be smaller); a
        context new to the flow is given the flow's null context."""
        S = self.config.set_size
        n, D = z0.shape
        device = next(self.flow.parameters()).device  # the prediction's device
        n_full = (n // S) * S
        outs, paths = [], []
        step = S * TRANSPORT_SETS
        full_sets = [z0[i : min(i + step, n_full)].reshape(-1, S, D) for i in range(0, n_full, step)]
        for part in [*full_sets, z0[n_full:].reshape(1, -1, D)]:
            if part.shape[0] == 0 or part.shape[1] == 0:
                continue
            B = part.shape[0]
            x_0 = torch.from_numpy(part.astype(np.float32)).to(device)  # (B, S, D)
            atoms = torch.tensor([atom_ids] * B, dtype=torch.long, device=device)  # (B, A)
            context = stats.float().to(device).expand(B, -1)  # (B, 2D)
            res = self.flow.transport(x_0, atoms, context, prior.float().to(device).expand(B, -1), n_steps=n_steps, solver=solver, return_path=return_path,
                                     new_context=new_context)
            x_1, path = res if return_path else (res, None)
            outs.append(x_1.reshape(-1, D).cpu().numpy())
            if return_path:
                paths.append(path.reshape(path.shape[0], -1, D).cpu().numpy())
        path = np.concatenate(paths, axis=1) if return_path else None
        return np.concatenate(outs), path

    # ------------------------------------------------------------------ persistence
    def save(self, dir_path: str | os.PathLike, overwrite: bool = False) -> None:
        """Save the model as a folder: VAE and flow weights, config, genes, registry, version.

        Parameters
        ----------
        dir_path
            Folder to write. It must not hold files unless ``overwrite`` is true.
        overwrite
            Replace an existing folder (only once the new one is complete).

        In a multi-device run (``strategy="ddp"``) only rank 0 writes; on the other ranks
        this does nothing.
        """
        self._check_trained()
        if not is_global_zero():
            return
        write_model(self, Path(dir_path), overwrite)

    @classmethod
    def load(cls, dir_path: str | os.PathLike, adata: AnnData | None = None) -> PerturbFlow:
        """Load a model saved with :meth:`save`.

        Parameters
        ----------
        dir_path
            The model folder.
        adata
            Optional training data to attach; its genes are checked against the model's.

        Returns
        -------
        The trained model.
        """
        model = read_model(cls, Path(dir_path))
        if adata is not None:
            aligned_counts(adata, model.genes, model.registry.layer)
            model.adata = adata
        return model

    def __repr__(self) -> str:
        state = "trained" if self.is_trained else "untrained"
        return (
            f"PerturbFlow({state}, backbone={self.config.backbone!r}, genes={len(self.genes)}, "
            f"atoms={len(self.atoms)}, contexts={len(self.contexts)})"
        )
