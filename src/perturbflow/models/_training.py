"""Training a PerturbFlow: the count VAE, the baselines in latent and gene space, the
flow's groups, the flow, and the calibration of its correction."""

from __future__ import annotations

import logging
import time

import lightning.pytorch as pl
import numpy as np
import torch

from perturbflow._errors import PerturbFlowError
from perturbflow.data import (
    context_labels,
    get_counts,
    log_normalize,
    log_normalize_rows,
    perturbation_atoms,
    read_rows,
    split_labels,
)
from perturbflow.flow import FlowEnsemble
from perturbflow.models._prediction import (
    decode_moves,
    gene_reference,
    mean_response,
    transport_sets,
)
from perturbflow.models._prior import BaselinePrior
from perturbflow.models._shrinkage import carried_scale
from perturbflow.models._transfer import ContextTransfer
from perturbflow.nn import context_statistics
from perturbflow.train import (
    GeneSpace,
    best_parts,
    build_groups,
    calibration_split,
    cells_by_group,
    choose_correction_scale,
    context_axes,
    contexts_to_hold_out,
    count_statistics,
    decoded_shifts,
    decoding_scores,
    digest,
    fit_flow,
    fit_flows,
    fit_vae,
    new_context_scores,
    open_run,
    reflow,
)

logger = logging.getLogger("perturbflow.models._perturbflow")  # the model's log, as before the split
# measured contexts needed for a bandwidth chosen near each context: with two, every
# bandwidth predicts one context from the other alike
MIN_LOCAL_CONTEXTS = 3


def train_model(
    model,
    max_epochs,
    accelerator,
    devices,
    flow_max_epochs,
    batch_size,
    seed,
    progress_bar,
    checkpoint_dir,
    checkpoint_every_n_steps,
    resume,
    strategy,
    precision,
) -> None:
    """Fit ``model`` (a :class:`~perturbflow.PerturbFlow` with training data) in place; the
    arguments are :meth:`~perturbflow.PerturbFlow.train`'s."""
    if model.adata is None:
        raise PerturbFlowError("this model was loaded without training data; it can only predict")
    adata, reg = model.adata, model.registry
    split = split_labels(adata, reg)
    fit_mask = split != "test"
    contexts = context_labels(adata, reg.context_keys)
    atoms = perturbation_atoms(adata, reg)

    settings = {"seed": seed, "max_epochs": max_epochs, "flow_max_epochs": flow_max_epochs,  # a resume matches
                "batch_size": batch_size, "config": model.config.to_dict(), "genes": digest(model.genes),
                "n_fit": int(fit_mask.sum())}
    run = open_run(checkpoint_dir, settings, resume, checkpoint_every_n_steps)
    pl.seed_everything(seed, workers=True, verbose=False)
    start = time.perf_counter()
    logger.info("stage 1: count VAE on %d cells x %d genes", int(fit_mask.sum()), adata.n_vars)
    model.vae = fit_vae(
        get_counts(adata, reg.layer),
        np.flatnonzero(fit_mask),
        model.genes,
        model.config,
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
    epochs = model.vae.epochs
    logger.info("stage 1 done in %.0f s (%.0f cells/s over %d epochs)", elapsed,
                epochs * fit_mask.sum() / max(elapsed, 1e-9), epochs)
    start = time.perf_counter()
    z = model.vae.latent(get_counts(adata, reg.layer), np.flatnonzero(fit_mask))
    rows = np.flatnonzero(fit_mask)
    z_all = np.zeros((adata.n_obs, z.shape[1]), dtype=np.float32)
    z_all[rows] = z

    is_control = np.array([len(a) == 0 for a in atoms])
    control_rows = {c: np.flatnonzero(fit_mask & is_control & (contexts == c)) for c in model.contexts}
    control_rows = {c: r for c, r in control_rows.items() if len(r)}  # contexts the flow can start in
    model.context_stats = {c: context_statistics(torch.from_numpy(z_all[r])).tolist() for c, r in control_rows.items()}
    atom_index = {a: i + 1 for i, a in enumerate(model.atoms)}
    ctx_index = {c: i for i, c in enumerate(model.context_stats)}
    stats = np.array([model.context_stats[c] for c in ctx_index], dtype=np.float32)

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
    axes = None  # each measured context's principal axes: its bandwidth is then chosen near it
    measured_contexts = sorted({c for _, c in train_cells})
    if model.config.context_bandwidth == "local" and len(measured_contexts) >= MIN_LOCAL_CONTEXTS:
        axes = context_axes(get_counts(adata, reg.layer), {
            c: np.concatenate([control_rows.get(c, []), *(v for k, v in train_cells.items() if k[1] == c)]).astype(int)
            for c in measured_contexts
        }, seed)
    transfer, model.transfer_scores = ContextTransfer.select(gene_shifts, sizes, control_means, noise, axes)
    model.gene_prior = BaselinePrior(gene_shifts, sizes, transfer)
    latent_controls = {c: z_all[r].mean(0) for c, r in control_rows.items()}
    latent_shifts = {k: z_all[v].mean(0) - latent_controls[k[1]] for k, v in train_cells.items()}
    latent_noise = {k: float(z_all[v].var(0).mean() / max(len(v) - 1, 1)) for k, v in train_cells.items()}
    # shrunk per perturbation by how it stands out of the noise in the latent, where it is moved
    model.prior = BaselinePrior(latent_shifts, sizes, transfer.in_space(latent_shifts, latent_noise))
    # what of each measured change the latent does not carry, moved between groups like
    # the shifts themselves and added back in gene space at prediction, each perturbation's
    # with the share of its own effect the latent prior keeps: one judgement per perturbation
    decoded = decoded_shifts(model.vae, z_all, library, latent_shifts, control_rows, seed)
    model.residual_prior = BaselinePrior({k: gene_shifts[k] - decoded[k] for k in gene_shifts}, sizes,
                                         model.prior.transfer)
    if model.config.residual_shrinkage:  # carried to other contexts in as far as it predicts them
        model.residual_prior.carried_scale = carried_scale(model.residual_prior)
        logger.info("residual carried between contexts: %.2f of it", model.residual_prior.carried_scale)
    # every group with the baseline computed without it, as a held-out group would see it
    train_groups, val_groups = (
        build_groups(cells, model.prior, atom_index, ctx_index, control_rows) for cells in (train_cells, val_cells)
    )
    model.decoding_scores = score_decodings(model, train_groups + val_groups, z_all, get_counts(adata, reg.layer),
                                            list(ctx_index), seed)
    fit_groups = train_groups  # what the flow is fitted on; with flow_prior="own", from their own shifts
    if model.config.flow_prior == "own":
        fit_groups = build_groups(train_cells, model.prior, atom_index, ctx_index, control_rows, own_prior=True)
    logger.info("priors and groups in %.0f s", time.perf_counter() - start)
    start = time.perf_counter()
    logger.info("stage 2: latent flow on %d groups (%d validation)", len(train_groups), len(val_groups))

    fit = {
        "z_all": z_all, "stats": stats, "max_epochs": flow_max_epochs or max_epochs, "accelerator": accelerator,
        "devices": devices, "seed": seed, "progress_bar": progress_bar, "stage": run.stage("flow") if run else None,
        "strategy": strategy, "precision": precision,
    }
    # The flow is fitted once. With a baseline prior, a fifth of the training groups
    # (or the validation groups) is held out of that fit and used to choose how much of
    # the flow's correction to keep, for this very network.
    model.correction_scale = 1.0
    names = list(ctx_index)
    calibration = []
    if model.config.residual_prior:
        calibration = val_groups or calibration_split(train_groups, seed)
    fitting = [f for f, g in zip(fit_groups, train_groups) if all(g is not c for c in calibration)] or fit_groups

    def transport(z0, atom_ids, context, prior, new_context=False):
        stats_c, prior_t = torch.from_numpy(stats[context]), torch.from_numpy(prior)
        end = transport_sets(
            model, z0, atom_ids, stats_c, prior_t, model.config.n_steps, model.config.solver, False, new_context
        )[0]
        if model.config.centered_correction:  # as predict() applies it
            end = end - (end - z0 - prior).mean(0)
        return end

    # In a context new to the flow, what of its correction to apply ("probe") is chosen with
    # a probe: a flow fitted on every training group but those of the measured context
    # nearest to each new one, run there under its null context. The flow that predicts
    # is then fitted with that context.
    held_contexts = []
    measured = {names[g.context] for g in train_groups + val_groups}
    model.measured_contexts = sorted(measured)
    if model.config.new_context_flow == "probe" and model.config.residual_prior and not model.config.centered_correction:
        held_contexts = contexts_to_hold_out(
            {c: m for c, m in latent_controls.items() if c not in measured},
            {c: m for c, m in latent_controls.items() if c in measured},
        )
    probe_fit = [f for f, g in zip(fit_groups, train_groups) if names[g.context] not in held_contexts]
    if held_contexts and probe_fit:
        logger.info("probe flow without %s, for the flow's part in new contexts", ", ".join(held_contexts))
        probe_stage = run.stage("flow_probe") if run else None
        model.flow = fit_flow(model.config, len(model.atoms), probe_fit, val_groups, **{**fit, "stage": probe_stage})
        model.new_context_scores = new_context_scores(
            lambda *args: transport(*args, new_context=True),
            [g for g in train_groups if names[g.context] in held_contexts], z_all, names, seed,
            genes=probe_gene_space(model, get_counts(adata, reg.layer), names, seed),
        )
        model.new_context_parts = best_parts(model.new_context_scores)
        logger.info("flow's part in new contexts, chosen on held-out contexts: %s",
                    ", ".join(f"{c}: {p}" for c, p in model.new_context_parts.items()))
    # the flow's correction is calibrated only in contexts whose perturbed cells it saw
    model.flow_contexts = sorted({names[g.context] for g in fitting})
    model.flow = fit_flows(model.config, len(model.atoms), fitting, val_groups,
                           stage_of=lambda name: run.stage(name) if run else None,
                           **{k: v for k, v in fit.items() if k != "stage"})
    if model.config.reflow_steps:  # a second rectification on the flow's own couplings

        def rectified(flow):
            return reflow(flow, model.config, fitting, z_all, stats, model.config.reflow_steps,
                          accelerator=accelerator, devices=devices, seed=seed, progress_bar=progress_bar,
                          strategy=strategy, precision=precision)

        members = getattr(model.flow, "members", None)
        model.flow = FlowEnsemble([rectified(m) for m in members]) if members else rectified(model.flow)
    elapsed = time.perf_counter() - start
    n_steps = (model.config.flow_steps_per_epoch * model.config.flow_ensemble
               * (flow_max_epochs or max_epochs or model.config.flow_max_epochs))
    logger.info("stage 2 done in %.0f s (%.0f cells/s over %d steps)", elapsed,
                n_steps * model.config.flow_batch_size * model.config.set_size / max(elapsed, 1e-9), n_steps)
    if calibration:
        model.correction_scale = choose_correction_scale(transport, calibration, z_all, seed)
        logger.info("correction scale chosen on %d held-out groups: %.2f", len(calibration), model.correction_scale)
    model.flow = model.flow.cpu().eval()
    model.is_trained = True


def probe_gene_space(model, counts, context_names, seed) -> GeneSpace:
    """The probe's parts scored on log-normalised expression: each source cell decoded as
    :meth:`~perturbflow.PerturbFlow.predict` decodes it, its expected counts normalised as the
    protocol normalises a prediction."""

    def predicted(group, rows, z0, z1):
        exact = model.exact_mean_in(context_names[group.context])
        return decoded_group(model, counts, context_names, group, rows, z0, z1, seed, exact)

    return GeneSpace(real=lambda rows: real_genes(counts, rows), predicted=predicted)


def real_genes(counts, rows: np.ndarray) -> np.ndarray:
    """The log-normalised expression of ``rows``, as the protocol reads real cells."""
    return log_normalize(read_rows(counts, rows))


def decoded_group(model, counts, context_names, group, rows, z0, z1, seed, exact_mean: bool) -> np.ndarray:
    """The ``group``'s prediction for its source cells ``rows`` (latents ``z0``) moved to
    ``z1``, decoded as :meth:`~perturbflow.PerturbFlow.predict` decodes it (the group's mean
    kept exact or not), log-normalised."""
    atom_set = frozenset(model.atoms[int(i) - 1] for i in group.atom_ids if i > 0)
    ref, shift = gene_reference(model, atom_set, context_names[group.context], z0, z0 + group.prior)
    shift = shift + mean_response(model, z0, z1)
    expected = decode_moves(model, ref, z1, counts, rows, [shift], np.zeros(len(rows), dtype=int), seed,
                            [exact_mean])[1]
    return log_normalize_rows(expected)


def score_decodings(model, groups, z_all, counts, context_names, seed) -> dict[str, dict[str, float]]:
    """Each measured context's groups predicted from the other contexts (the prior without
    the flow), decoded with and without the exact mean and scored against their real cells
    (:func:`~perturbflow.train.decoding_scores`); empty unless ``exact_mean="auto"`` and
    at least two contexts hold perturbed cells."""
    config = model.config
    if config.exact_mean != "auto" or config.decode != "delta" or not config.residual_prior:
        return {}
    if len({g.context for g in groups}) < 2:
        return {}

    def predicted(group, rows, exact):
        z0 = z_all[rows]
        return decoded_group(model, counts, context_names, group, rows, z0, z0 + group.prior, seed, exact)

    scores = decoding_scores(groups, context_names, lambda rows: real_genes(counts, rows), predicted, seed)
    logger.info("exact mean against clipped, each measured context predicted from the others: %s", ", ".join(
        f"{c}: {s['exact']:.3f} / {s['clipped']:.3f}" for c, s in scores.items()))
    return scores
