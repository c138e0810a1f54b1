"""``pf.pl.trajectories``: flow paths of a few control cells in latent space."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from anndata import AnnData
from matplotlib.collections import LineCollection

from perturbflow._errors import PerturbFlowError
from perturbflow.metrics._groups import canonical_labels
from perturbflow.models import PerturbFlow
from perturbflow.pl._utils import finish

PATHS_KEY = "perturbflow_paths"


def trajectories(
    model: PerturbFlow,
    control_adata: AnnData,
    perturbation: str,
    *,
    n_cells: int = 20,
    n_steps: int = 20,
    seed: int = 0,
    max_background: int | None = 2000,
    ax: plt.Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> plt.Axes | None:
    """Flow paths of a few control cells under one perturbation, on the latent's first 2 PCs.

    ``n_cells`` control cells are carried from ``t = 0`` (the control cell's latent) to
    ``t = 1`` (the predicted perturbed latent) with ``n_steps`` ODE steps; each path is
    coloured by time. The cells of ``control_adata`` are drawn behind them: its control cells
    in grey and, when it holds them, the real cells of ``perturbation`` in light red, so the
    paths can be seen to end (or not) among them. The two axes are the first principal
    components of the background latents and the paths together.

    Parameters
    ----------
    model
        A trained :class:`~perturbflow.PerturbFlow`.
    control_adata
        Cells with counts over the model's genes; its control cells are the sources. Pass the
        whole dataset to also see the real cells of the perturbation.
    perturbation
        The perturbation to follow, e.g. ``"KLF1+MAP2K6"``.
    n_cells
        Paths drawn.
    n_steps
        ODE steps of each path.
    seed
        Seed for choosing the source cells and the background subsample.
    max_background
        Background cells drawn at most (``None``: all).
    ax
        Axes to draw into.
    show, save
        Show the figure; save it to this path.

    Returns
    -------
    The axes, unless ``show`` is true. ``control_adata`` is not modified; the figure is saved
    to ``save`` when given.
    """
    if n_cells < 1 or n_steps < 1:
        raise PerturbFlowError("n_cells and n_steps must be at least 1")
    pred = model.predict(
        control_adata, perturbations=[perturbation], n_steps=n_steps, seed=seed, n_cells=n_cells, return_path=True
    )
    if PATHS_KEY not in pred.uns:
        raise PerturbFlowError("the model did not return flow paths")
    paths = np.asarray(pred.uns[PATHS_KEY], dtype=np.float64)  # (T, N, D)
    rng = np.random.default_rng(seed)
    rows = np.arange(control_adata.n_obs)
    if max_background is not None and control_adata.n_obs > max_background:
        rows = np.sort(rng.choice(control_adata.n_obs, max_background, replace=False))
    background = model.get_latent_representation(control_adata[rows]).astype(np.float64)  # (M, D)
    reg = model.registry
    if reg.perturbation_key in control_adata.obs.columns:
        labels = canonical_labels(control_adata.obs[reg.perturbation_key].to_numpy()[rows], reg.control_value)
    else:
        labels = np.full(len(rows), reg.control_value, dtype=object)
    target = canonical_labels([perturbation], reg.control_value)[0]

    T, N, D = paths.shape
    points = np.vstack([background, paths.reshape(-1, D)])  # (M + T N, D)
    center = points.mean(0)
    _, _, vt = np.linalg.svd(points - center, full_matrices=False)
    proj = vt[:2].T  # (D, 2)
    bg2 = (background - center) @ proj  # (M, 2)
    paths2 = (paths - center) @ proj  # (T, N, 2)

    if ax is None:
        _, ax = plt.subplots(figsize=(4.8, 4.2))
    groups = (
        (labels == reg.control_value, "silver", "control cells"),
        (labels == target, "lightcoral", f"real {perturbation} cells"),
        ((labels != reg.control_value) & (labels != target), "#ececec", "other cells"),
    )
    for mask, color, name in groups:
        if mask.any():
            ax.scatter(bg2[mask, 0], bg2[mask, 1], s=5, color=color, linewidths=0, label=name)
    steps = np.stack([paths2[:-1], paths2[1:]], axis=2)  # (T-1, N, 2, 2): start and end of each step
    segments = steps.transpose(1, 0, 2, 3).reshape(-1, 2, 2)  # (N (T-1), 2, 2), cell by cell
    times = np.tile((np.arange(T - 1) + 0.5) / (T - 1), N)
    lines = LineCollection(segments, array=times, cmap="viridis", linewidths=1.0, alpha=0.9)
    lines.set_clim(0.0, 1.0)
    ax.add_collection(lines)
    ax.scatter(paths2[0, :, 0], paths2[0, :, 1], s=14, color="black", marker="o", label="control (t = 0)")
    end_label = f"{perturbation} (t = 1)"
    ax.scatter(paths2[-1, :, 0], paths2[-1, :, 1], s=22, color="tab:red", marker="^", label=end_label)
    ax.figure.colorbar(lines, ax=ax, label="t", fraction=0.046, pad=0.04)
    ax.set_xlabel("latent PC1")
    ax.set_ylabel("latent PC2")
    ax.set_title(f"{perturbation}: flow paths of {N} cells ({n_steps} steps)", fontsize=9)
    ax.legend(fontsize=7, loc="best", markerscale=1.2)
    return finish(ax, show, save)
