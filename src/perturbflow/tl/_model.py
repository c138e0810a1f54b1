"""``pf.tl.fit``, ``pf.tl.latent`` and ``pf.tl.predict``: the model in the scanpy manner."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal

from anndata import AnnData

from perturbflow._errors import PerturbFlowError
from perturbflow.models import PerturbFlow


def fit(
    adata: AnnData,
    backbone: str = "mlp",
    *,
    max_epochs: int | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> PerturbFlow:
    """Build a :class:`~perturbflow.PerturbFlow` model on ``adata`` and train it.

    Parameters
    ----------
    adata
        AnnData set up with :meth:`PerturbFlow.setup_anndata <perturbflow.PerturbFlow.setup_anndata>`.
    backbone
        Name of the velocity backbone (``"mlp"``, ``"dit"``, ``"settransformer"``, ``"ssm"``
        or one added with :func:`perturbflow.backbones.register_backbone`).
    max_epochs
        Epochs of both training stages; ``None`` picks them from the data size.
    seed
        Random seed of training.
    **kwargs
        Arguments of :meth:`PerturbFlow.train <perturbflow.PerturbFlow.train>`
        (``accelerator``, ``devices``, ``strategy``, ``precision``, ``flow_max_epochs``,
        ``batch_size``, ``progress_bar``)
        and hyper-parameters of :class:`~perturbflow.PerturbFlowConfig` (``n_latent``,
        ``flow_steps_per_epoch``, ...), told apart by name.

    Returns
    -------
    The trained model. ``adata`` is not modified beyond what ``setup_anndata`` wrote.
    """
    train_names = set(inspect.signature(PerturbFlow.train).parameters) - {"self"}
    train_kwargs = {k: v for k, v in kwargs.items() if k in train_names}
    config_kwargs = {k: v for k, v in kwargs.items() if k not in train_names}
    model = PerturbFlow(adata, backbone=backbone, **config_kwargs)
    model.train(max_epochs=max_epochs, seed=seed, **train_kwargs)
    return model


def latent(
    adata: AnnData,
    model: PerturbFlow,
    *,
    key_added: str = "X_perturbflow",
    copy: bool = False,
) -> AnnData | None:
    """Embed the cells of ``adata`` in the model's latent space (the VAE's posterior means).

    Parameters
    ----------
    adata
        Cells with counts over the model's genes (in the model's counts layer or ``X``).
    model
        A trained :class:`~perturbflow.PerturbFlow`.
    key_added
        Key of ``obsm`` (the latents) and ``uns`` (the parameters) written.
    copy
        Return a modified copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or a copy of ``adata`` when ``copy=True``. Writes ``obsm[key_added]``, an array
    of shape ``(n_obs, n_latent)``, and ``uns[key_added] = {'params': {...}}``.
    """
    z = model.get_latent_representation(adata)
    adata = adata.copy() if copy else adata
    adata.obsm[key_added] = z
    adata.uns[key_added] = {"params": {"n_latent": int(z.shape[1]), "backbone": model.config.backbone}}
    return adata if copy else None


def predict(
    model: PerturbFlow,
    control_adata: AnnData,
    perturbations: str | Sequence[str],
    *,
    n_steps: int | None = None,
    seed: int = 0,
    n_cells: int | None = None,
    solver: Literal["euler", "midpoint", "adaptive"] | None = None,
    device: str | None = None,
) -> AnnData:
    """Predict perturbed cells from control cells.

    Parameters
    ----------
    model
        A trained :class:`~perturbflow.PerturbFlow`.
    control_adata
        Control cells (counts over the model's genes). Their context columns name each cell's
        context; a context never seen in training is described by these cells.
    perturbations
        Label or labels to predict, e.g. ``["KLF1+MAP2K6"]``; every atom must have been seen.
    n_steps
        ODE steps (default: the model's).
    seed
        Seed for choosing source cells and sampling counts.
    n_cells
        Cells per perturbation, drawn with replacement; ``None`` gives one per control cell.
    solver
        ``"euler"``, ``"midpoint"`` or ``"adaptive"`` (default: the model's).
    device
        Where the model runs: ``None`` a CUDA device when there is one, else the CPU;
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``... choose.

    Returns
    -------
    A new AnnData of predicted cells: sampled integer counts in ``X``, expected counts in
    ``layers['expected']``, latents in ``obsm['X_perturbflow']``, the perturbation label,
    context columns and ``source_cell`` in ``obs``, settings in ``uns['perturbflow_prediction']``.
    ``control_adata`` is not modified.
    """
    if isinstance(perturbations, str):
        perturbations = [perturbations]
    if not model.is_trained:
        raise PerturbFlowError("the model is not trained; use pf.tl.fit or model.train() first")
    return model.predict(
        control_adata,
        perturbations=list(perturbations),
        n_steps=n_steps,
        seed=seed,
        n_cells=n_cells,
        solver=solver,
        device=device,
    )
