"""PerturbFlow: the user-facing model (count VAE + latent rectified flow)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from anndata import AnnData

from perturbflow._distributed import is_global_zero
from perturbflow._errors import PerturbFlowError
from perturbflow.data import (
    context_labels,
    get_registry,
    perturbation_atoms,
    setup_anndata,
    split_labels,
)
from perturbflow.flow import LatentFlowModule
from perturbflow.models._config import PerturbFlowConfig
from perturbflow.models._device import modules_on, prediction_device
from perturbflow.models._inputs import aligned_counts
from perturbflow.models._persistence import read_model, write_model
from perturbflow.models._prediction import predict_cells, transport_sets
from perturbflow.models._prior import BaselinePrior
from perturbflow.models._training import train_model
from perturbflow.models._transfer import ContextTransfer
from perturbflow.nn import CountVAE
from perturbflow.train import (
    DEFAULT_EVERY_N_STEPS,
    FEW_CONTEXTS_FRACTION,
    MIN_CONTEXTS,
    nearest_context,
    new_context_exact_mean,
)

logger = logging.getLogger(__name__)



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
        self.measured_contexts: list[str] = []  # contexts with perturbed training cells
        self.new_context_parts: dict[str, str] = {}  # held-out context -> its part, for "probe"
        self.new_context_scores: dict = {}  # {context: {space: {part: energy: all cells, halves}}}
        self.decoding_scores: dict[str, dict[str, float]] = {}  # {measured context: {decoding: energy}}

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
            Random seed of both stages. A run is repeated exactly on the same machine with the
            same number of torch threads (``torch.set_num_threads``); with another number the
            floating-point sums, and so the trained model, differ slightly (on McFaline a
            seed's figures moved within the spread over seeds: benchmarks/RESULTS.md,
            "Session 17").
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
        train_model(
            self, max_epochs, accelerator, devices, flow_max_epochs, batch_size, seed, progress_bar,
            checkpoint_dir, checkpoint_every_n_steps, resume, strategy, precision,
        )

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
        trained with (``"probe"`` looks up the nearest held-out context with it).
        The part is applied at ``new_context_fraction``; by default whole, and at
        ``FEW_CONTEXTS_FRACTION`` where ``"auto"`` applies the shape (fewer than
        ``MIN_CONTEXTS`` measured contexts).
        """
        if not self.config.residual_prior or context in self.flow_contexts:
            return self.correction_scale
        choice = self.new_context_choice(context, mean)
        if choice == "off":
            return 0.0
        if self.config.new_context_fraction is not None:
            return float(self.config.new_context_fraction)
        # "auto" resolves to the shape exactly where it found too few measured contexts
        return FEW_CONTEXTS_FRACTION if self.config.new_context_flow == "auto" and choice == "shape" else 1.0

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
        ``"full"`` where the training data measured at least ``MIN_CONTEXTS`` contexts (from
        which the flow learned its null context), ``"shape"`` with fewer. With ``"probe"``, the
        choice made on the held-out measured context nearest to it (by the mean of the
        control latents; ``"off"`` when none was held out)."""
        setting = self.config.new_context_flow
        if setting == "auto":
            return "full" if len(self.measured_contexts) >= MIN_CONTEXTS else "shape"
        if setting != "probe":
            return setting
        if context in self.new_context_parts:
            return self.new_context_parts[context]
        if mean is None and context in self.context_stats:
            mean = self.control_latent_mean(context)
        if mean is None or not self.new_context_parts:
            return "off"
        near = nearest_context(np.asarray(mean), {c: self.control_latent_mean(c) for c in self.new_context_parts})
        return self.new_context_parts[near]

    def control_latent_mean(self, context: str) -> np.ndarray:
        """The mean latent of the control cells of a context the model was trained with."""
        stats = np.asarray(self.context_stats[context], dtype=np.float32)
        return stats[: len(stats) // 2]

    def exact_mean_in(self, context: str) -> bool | float:
        """Whether each predicted group's mean is kept exact in ``context``, or the share of
        clipping's lift put back (see ``PerturbFlowConfig.exact_mean``). With ``"auto"``: yes
        in a context the flow was fitted in; in a new one, the share that predicted the
        measured training contexts' real group means from the others
        (:func:`~perturbflow.train.fitted_share` on ``decoding_scores``); yes without such
        scores. A model saved before the fit's sums were recorded (before session 16) takes
        the decoding with the better mean score, as it did then."""
        setting = self.config.exact_mean
        if setting != "auto":
            return setting if isinstance(setting, bool) else float(setting)
        measured = sorted(c for c in self.decoding_scores if c != context)
        if context in self.flow_contexts or not measured:
            return True
        return new_context_exact_mean(self.decoding_scores, measured)

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
            return predict_cells(self, control_adata, perturbations, n_steps, seed, n_cells, solver, return_path, method)

    def plain_prior(self) -> BaselinePrior:
        """The latent shifts with plain transfer: the mean over the other contexts (scGen)."""
        return BaselinePrior(self.prior.shifts, self.prior.sizes, ContextTransfer(specificity=1.0))

    def _transport(self, z0: np.ndarray, atom_ids, stats, prior, n_steps, solver, return_path, new_context):
        """The flow's transport of ``(n, D)`` latents (see :func:`transport_sets`)."""
        return transport_sets(self, z0, atom_ids, stats, prior, n_steps, solver, return_path, new_context)

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
