"""Prediction with a trained PerturbFlow: each control cell encoded, moved by the prior and
the flow, and decoded with its own library size."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from perturbflow._errors import PerturbFlowError
from perturbflow.data import context_labels, log_normalized_mean
from perturbflow.metrics._likelihood import DISPERSION_KEY
from perturbflow.models._inputs import aligned_counts, control_cells, requested_perturbations
from perturbflow.nn import context_statistics
from perturbflow.train import apply_part

TRANSPORT_SETS = 64  # sets of control cells moved in one forward pass
MEAN_RESPONSE_CELLS = 4096  # cells a group's mean decoded change is taken over


def predict_cells(model, control_adata, perturbations, n_steps, seed, n_cells, solver, return_path, method) -> AnnData:
    """:meth:`~perturbflow.PerturbFlow.predict` of a trained ``model``, its modules already on
    the prediction's device."""
    if method not in ("flow", "latent_shift"):
        raise PerturbFlowError(f"unknown method {method!r}; use 'flow' or 'latent_shift'")
    if return_path and method != "flow":
        raise PerturbFlowError("return_path needs method='flow'")
    requested = requested_perturbations(perturbations, model.atoms, model.registry)
    control_adata = control_cells(control_adata, model.registry)
    reg = model.registry
    for key in reg.context_keys:
        if key not in control_adata.obs.columns:
            raise PerturbFlowError(f"context key {key!r} not found in the control cells' obs")
    counts = aligned_counts(control_adata, model.genes, reg.layer)
    contexts = context_labels(control_adata, reg.context_keys)
    rng = np.random.default_rng(seed)
    z0_all = model.vae.latent(counts, np.arange(control_adata.n_obs))
    library = np.asarray(counts.sum(axis=1)).reshape(-1).astype(np.float32)
    if np.any(library <= 0):
        raise PerturbFlowError("some control cells have no counts; filter empty cells first")

    n_steps = n_steps or model.config.n_steps
    solver = solver or model.config.solver
    z_pred, src_rows, labels, paths = [], [], [], []
    z_ref, gene_shift, shift_of_rows = [], [], []
    applied: dict[str, float] = {}  # the share of the flow's correction kept, per context
    parts: dict[str, str] = {}  # which part of it: all, its mean, or its shape (less the mean)
    bandwidths: dict[str, float] = {}  # the context transfer's kernel bandwidth, per context
    exact: dict[str, bool | float] = {}  # whether each group's mean is kept exact (or its share), per context
    exact_of_group: list[bool | float] = []
    specificity: dict[str, dict[str, float]] = {}  # per context and perturbation, where carried
    plain = model.plain_prior() if method == "latent_shift" else None
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
            prior, kept = model.prior.prior_and_specificity(atom_set, c, ctrl_mean)
            if kept is not None:  # carried from other contexts: the share of its own effect kept
                specificity.setdefault(c, {})[label] = round(float(kept), 4)
            if c not in bandwidths:  # these depend on the context alone
                bandwidths[c] = float(model.prior.transfer.bandwidth_in(c, ctrl_mean))
                exact[c] = model.exact_mean_in(c)
            exact_of_group.append(exact[c])
            base = z0_all[rows_c] + prior if model.config.residual_prior else z0_all[rows_c]
            ref, shift = gene_reference(model, atom_set, c, z0_all[rows_c], base, ctrl_mean)
            z_ref.append(ref)
            gene_shift.append(shift)
            mean_c = stats[: stats.shape[0] // 2].numpy()
            scale, part = model.correction_scale_in(c, mean_c), model.correction_part_in(c, mean_c)
            end, path = base, None  # no flow to run where none of its correction is kept
            if scale or return_path:
                end, path = transport_sets(
                    model, z0_all[rows_c], atom_ids, stats, torch.from_numpy(prior), n_steps, solver, return_path,
                    c not in model.flow_contexts and model.config.new_context_condition == "null",
                )
            # the flow's move beyond the prior: all of it, its mean or its shape (less the mean)
            correction = apply_part(base, end, "full" if part == "all" else part) - base
            z_pred.append(base + scale * correction)
            applied[c] = scale
            parts[c] = part
            gene_shift[-1] = gene_shift[-1] + mean_response(model, z0_all[rows_c], z_pred[-1])
            shift_of_rows.append(np.full(len(rows_c), len(gene_shift) - 1))
            paths.append(path)
            src_rows.append(rows_c)
            labels += [label] * len(rows_c)
    z_pred = np.concatenate(z_pred)
    src_rows = np.concatenate(src_rows)
    moves = model.config.decode == "delta" and method == "flow"  # source cells moved, not sampled anew
    if moves:
        X, expected = decode_moves(model, np.concatenate(z_ref), z_pred, counts, src_rows, gene_shift,
                                   np.concatenate(shift_of_rows), seed, exact_of_group)
    else:
        X, expected = model.vae.decode(z_pred, library[src_rows], seed=seed)

    obs = pd.DataFrame(index=[f"pred{i}" for i in range(len(src_rows))])
    obs[reg.perturbation_key] = pd.Categorical(labels)
    for key in reg.context_keys:
        obs[key] = control_adata.obs[key].to_numpy()[src_rows]
    obs["source_cell"] = control_adata.obs_names.to_numpy()[src_rows]
    pred = AnnData(X=X, obs=obs, var=pd.DataFrame(index=model.genes))
    pred.var[DISPERSION_KEY] = model.vae.dispersion()  # the decoder's NB theta, for evaluation
    pred.layers["expected"] = expected
    pred.obsm["X_perturbflow"] = z_pred
    pred.uns["perturbflow_prediction"] = {
        "n_steps": n_steps,
        "solver": solver,
        "seed": seed,
        "method": method,
        "backbone": model.config.backbone,
        "flow_correction": applied,
        "flow_correction_part": parts,
        "new_context_condition": model.config.new_context_condition,
        "context_bandwidth": bandwidths,
        "gene_offset": model.config.gene_offset if model.config.residual_prior else "none",
        "exact_mean": {c: (e if moves else False) for c, e in exact.items()},
        "exact_mean_by": model.config.exact_mean_by,
        "specificity": specificity,
        "perturbation_key": reg.perturbation_key,
        "control_value": reg.control_value,
        "context_keys": list(reg.context_keys),
    }
    if return_path:
        pred.uns["perturbflow_paths"] = np.concatenate(paths, axis=1)
    return pred


def gene_reference(model, atom_set, context, z0: np.ndarray, base: np.ndarray, ctrl_mean=None):
    """Where a group's decoded change starts, and the gene-space shift added to it.

    With ``gene_offset="residual"``: each cell's own decoded change from its control latent
    ``z0``, plus what of the measured changes the latent does not carry. With
    ``"prior_mean"``: each cell's own decoded change, and the gene-space baseline (from which
    :func:`mean_response` takes the group's mean decoded change away). Otherwise: the
    gene-space baseline, plus the decoded change from the baseline's latent end point ``base``.
    """
    offset = model.config.gene_offset
    if offset == "residual":
        return z0, model.residual_prior.prior(atom_set, context, ctrl_mean)
    return (z0 if offset == "prior_mean" else base), model.gene_prior.prior(atom_set, context, ctrl_mean)


def mean_response(model, z0: np.ndarray, z1: np.ndarray) -> np.ndarray | float:
    """What the group's mean decoded change adds to its gene shift: minus all of it with
    ``gene_offset="prior_mean"`` (the group's mean change is the gene-space baseline's); with
    ``cell_response < 1`` the share of it given to every cell alike (each cell's own change
    is scaled down by as much); 0 otherwise. The mean is taken over at most
    ``MEAN_RESPONSE_CELLS`` cells, evenly spaced."""
    offset, share = model.config.gene_offset, model.config.cell_response
    if offset == "prior_mean":
        weight = -1.0
    elif offset == "residual" and share < 1:
        weight = 1 - share
    else:
        return 0.0
    rows = np.unique(np.linspace(0, len(z0) - 1, min(len(z0), MEAN_RESPONSE_CELLS)).astype(int))
    return weight * model.vae.log_change(z0[rows], z1[rows]).mean(0)


def decode_moves(model, z_ref, z_pred, counts, rows, gene_shift, shift_of_rows, seed, exact_mean):
    """The source cells ``rows`` of ``counts`` moved by the decoded change from ``z_ref`` to
    ``z_pred`` and by ``gene_shift[shift_of_rows]``, with each group's mean kept exact where
    ``exact_mean`` (one boolean, or share of clipping's lift put back, per group) says so:
    integer and expected counts."""
    return model.vae.decode_delta(
        z_ref,
        z_pred,
        counts,
        rows,
        gene_shift=np.stack(gene_shift) if model.config.residual_prior else None,
        shift_of_rows=shift_of_rows,
        seed=seed,
        change_scale=model.config.cell_response if model.config.gene_offset == "residual" else 1.0,
        exact_mean=exact_mean,
        exact_by=model.config.exact_mean_by,
    )


def transport_sets(model, z0: np.ndarray, atom_ids, stats, prior, n_steps, solver, return_path, new_context):
    """Move ``(n, D)`` latents along ``model``'s flow in sets of ``set_size`` (the last set may
    be smaller); a context new to the flow is given the flow's null context. Returns the end
    points and, with ``return_path``, the paths ``(steps, n, D)``."""
    S = model.config.set_size
    n, D = z0.shape
    device = next(model.flow.parameters()).device  # the prediction's device
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
        res = model.flow.transport(x_0, atoms, context, prior.float().to(device).expand(B, -1), n_steps=n_steps, solver=solver, return_path=return_path,
                                 new_context=new_context)
        x_1, path = res if return_path else (res, None)
        outs.append(x_1.reshape(-1, D).cpu().numpy())
        if return_path:
            paths.append(path.reshape(path.shape[0], -1, D).cpu().numpy())
    path = np.concatenate(paths, axis=1) if return_path else None
    return np.concatenate(outs), path
