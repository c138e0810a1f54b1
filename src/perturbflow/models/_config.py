"""Hyper-parameters of a PerturbFlow model, as a dataclass with defaults that work."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, get_args, get_origin, get_type_hints


@dataclass
class PerturbFlowConfig:
    """Configuration of the count VAE (stage 1) and the latent flow (stage 2).

    Parameters
    ----------
    backbone
        Name of the velocity backbone (see ``perturbflow backbones``).
    n_latent
        Size of the VAE latent space the flow lives in.
    n_hidden, n_layers, dropout_rate
        Width, depth and dropout of the VAE's encoder and decoder.
    gene_likelihood
        ``"nb"`` (negative binomial) or ``"zinb"`` (zero-inflated).
    vae_decoder
        ``"nonlinear"`` (scvi-tools' SCVI: an MLP decoder, whose decoded change of a latent
        shift depends on each cell's state) or ``"linear"`` (LinearSCVI: log-proportions
        linear in the latent, which carries more of a measured effect through the latent;
        see ``benchmarks/decoded_effects.py``).
    vae_max_steps
        Gradient steps of the VAE when ``max_epochs`` is not given (see ``default_vae_epochs``).
        Half of them (with half the flow's epochs) halves the training on wide data (Kang,
        6,998 genes: 213 s against 410 s on one thread) but costs quality there (mean energy
        excess over the Kang folds, seed 0: 0.599 against 0.483; benchmarks/RESULTS.md,
        "Session 17").
    n_embed
        Size of the perturbation and context embeddings.
    atom_pooling
        How the atoms of a combination are pooled: ``"mean"`` or ``"sum"``.
    set_size
        Control cells moved together (the cells of a set for the set-transformer).
    coupling
        How the flow's training pairs control and perturbed cells: ``"ot"`` (pairs drawn
        from an exact optimal-transport plan between up to 256 cells of each side of the
        whole group), ``"random"``, or ``"gaussian"`` (each control latent paired with its image
        under the optimal-transport map between normals fitted to the group's two sides, a
        shift where their covariances agree and an affine move where they do not; the
        perturbed side's covariance shrunk towards the controls' by Ledoit-Wolf, so that a
        group of a few dozen cells is not given moves made of its covariance's sampling
        noise: benchmarks/RESULTS.md, "Session 26").
    flow_batch_size
        Sets per training step of the flow.
    flow_steps_per_epoch
        Training steps of the flow per epoch.
    flow_max_epochs
        Epochs of each of the flow's ``flow_ensemble`` fits when ``train`` is given no epochs.
        With one flow (the default until session 22), 20 epochs instead of 40 and the ``mlp``
        backbone at width 128 (``backbone_kwargs={"d_model": 128}``) trained the whole model
        about 2x faster (Norman: 67 s against 116-132 s), but the flow's mean move in a new
        cell type then helped less often (benchmarks/RESULTS.md, "Session 9"), so width 128
        is not the default.
    flow_ensemble
        Flows fitted from different seeds (member ``k`` from ``seed + 10000 k``), whose mean
        velocity carries the cells (:class:`~perturbflow.flow.FlowEnsemble`): each fit's own
        error averages out. ``K`` members take ``K`` times one member's training. The default,
        two members of 20 epochs, costs what one flow of 40 epochs (the default until session
        22) did and cut the Kang folds' mean energy excess from 0.465 to 0.449 over seeds 0-2
        (0.485 to 0.458 on seeds 0-1, 0.009 worse on seed 2; benchmarks/RESULTS.md,
        "Session 23").
    flow_lr
        Learning rate of the flow.
    ema_decay
        Decay of the exponential moving average of the flow weights (0 disables it).
    residual_prior
        Start the flow from the simple baselines (additive, mean shift) in latent space and
        learn the correction (see ``perturbflow.models._prior``).
    flow_prior
        The prior each training group of the flow starts from: ``"own"`` (its own measured
        latent mean shift, so the flow learns how each cell moves around the mean shift, its
        state-dependent part) or ``"leave_out"`` (the baseline computed without the group, so
        the flow also learns to correct the baseline's mean).
    context_bandwidth
        How similar contexts weigh when a perturbation's effect is carried to another context
        (see ``perturbflow.models._transfer``): ``"local"`` (the kernel's bandwidth chosen for
        each context from the cross-validated errors of the training contexts near it, in
        their cells' principal axes; with 3 or more measured contexts) or ``"global"`` (one
        bandwidth for all contexts, chosen on the squared error over all genes; sessions
        5-9). On the Kang folds ``"local"`` cut the transferred mean's error along the
        energy's axes by 17% (benchmarks/RESULTS.md, "Session 10").
    context_dropout
        Share of training sets whose context encoding is replaced by a learned null context,
        which stands in for a context new to the flow at prediction.
    centered_correction
        Remove the mean of the flow's correction to the prior over the cells of each predicted
        (perturbation, context): the prior sets the predicted mean shift and the flow how
        each cell moves around it.
    new_context_flow
        What of the flow's correction is applied in a context new to the flow (a cell type
        or line without perturbed training cells): ``"off"`` (none: the prediction is the
        context transfer's), ``"mean"`` (every cell moved by the correction's mean over the
        predicted cells of its perturbation), ``"shape"`` (the correction less that mean:
        the transfer sets the mean move, the flow, under its learned null context, how each
        cell moves around it), ``"full"``, or ``"auto"``: ``"full"`` where the training data
        measured at least 5 contexts (``perturbflow.train.MIN_CONTEXTS``), from which the
        flow learns a null context that carries to a new one, ``"shape"`` at half its size
        (``perturbflow.train.FEW_CONTEXTS_FRACTION``) with fewer. Over the 7
        Kang folds and 3 seeds the whole transport cut the mean energy excess from 0.548
        (flow off) to 0.469, gaining on 4 folds and losing on 2 (benchmarks/RESULTS.md,
        "Session 21"); with two training contexts
        (McFaline's lines, Norman's replicates) its mean move costs, and its shape gains on
        top-20 Pearson at an energy cost that half the shape avoids (benchmarks/RESULTS.md,
        "Session 27"). ``"probe"`` (the default of
        sessions 7-20): a probe flow is fitted without the measured context nearest to each
        new one, each part of its correction is scored there under the null context, and a
        new context gets the choice of its nearest probed context, a part being chosen only
        if it cuts the latent energy distance to the held-out context's real cells by a
        twentieth against ``"off"`` on all of them and on both halves
        (``perturbflow.train.best_parts``); it is a second flow fit, and one held-out
        neighbour proved a poor stand-in for some cell types (B, dendritic cells).
    new_context_fraction
        The fraction of ``new_context_flow``'s part applied in a context new to the flow;
        ``None``: whole, except where ``"auto"`` applies the shape (then
        ``perturbflow.train.FEW_CONTEXTS_FRACTION``).
    new_context_condition
        The context the flow is conditioned on where it runs in a context new to it:
        ``"null"`` (the learned null context of context dropout) or ``"own"`` (the
        statistics of the new context's own control latents, through the context encoder
        fitted on the measured contexts).
    decode
        ``"delta"``: each predicted cell is its real source cell moved by the decoded change
        along its flow path (the decoder's reconstruction error cancels); ``"direct"``: the
        counts are sampled from the decoder at the predicted latent.
    gene_offset
        With ``decode="delta"`` and a baseline prior, what is added in gene space:
        ``"residual"`` (each cell moves by the decoded change from its own latent to its
        predicted latent, plus the part of the measured mean changes that the latent does not
        carry, transferred like the shifts) or ``"baseline"`` (the gene-space baseline's
        change plus the decoded change from the baseline's latent end point; sessions 1-4)
        or ``"prior_mean"`` (each predicted group's mean change is the gene-space baseline's,
        and each cell moves around it by its own decoded change less the group's mean
        decoded change).
    cell_response
        With ``gene_offset="residual"``: the share of each cell's own decoded change beyond
        the mean decoded change of its predicted group (1: every cell moves by what the
        decoder gives for its own state; 0: every cell of a group moves by the group's mean
        decoded change).
    residual_shrinkage
        With ``gene_offset="residual"``: carry each perturbation's residual (its measured mean
        change less the decoded change of its latent shift) into another context only in the
        share that predicts the residuals measured in the training contexts from the others
        (a least-squares coefficient in ``[0, 1]``, ``perturbflow.models._shrinkage``);
        ``False`` carries all of it (sessions 1-14). Combinations of singles measured in
        their own context keep the singles' whole residuals.
    exact_mean
        With ``decode="delta"``: keep each predicted group's mean log-normalised expression,
        per gene, where the moves of its cells add up to (``True``), or not (``False``).
        Moved cells are clipped at 0, which lifts the mean of a gene that goes down (its
        zeros cannot fall); ``exact_mean_by`` says how it is put back, as the
        ``additive_exact`` baseline does in gene space. A number in ``[0, 1]`` puts back
        that share of the lift. ``"auto"`` keeps it exact in the contexts the flow was
        fitted in; in a new context it puts back the share fitted on the measured training
        contexts: each is predicted from the others both ways, and the share is the
        least-squares coefficient of their real group means on the exact decoding's, both
        less the clipped decoding's, in ``[0, 1]`` (``perturbflow.train.fitted_share``).
        Which way is right differs between contexts and is not predictable from the others,
        so choosing one (sessions 13-15) was wrong on NK in every seed; the share (0.37-0.52
        on Kang, 0-0.23 on McFaline) hedges. Kang, every fold, seeds 0-2: mean energy
        excess 0.497 against 0.700 with the choice, 0.708 always exact, 0.697 always clipped,
        same top-20 Pearson (benchmarks/RESULTS.md, "Session 16"). Session 11's figures,
        exact against clipped: Norman top-20 Pearson 0.912 -> 0.943 (a context the flow was
        fitted in: exact there).
    exact_mean_by
        How the mean is kept exact: ``"zeroing"`` sets the lowest cells of a falling gene to 0,
        up to the level that puts the group's mean where its moves add up to (the other cells
        keep their own moves), ``"thinning"`` sets its cells to 0 at random with the chance
        that does it (as thinning of counts makes zeros), ``"shift"`` moves every cell of the
        group by one per-gene shift (session 11). With the model's moves (benchmarks/RESULTS.md,
        "Session 12", seed 0): Norman top-20 Pearson / energy excess 0.943 / 0.112 by zeroing,
        0.942 / 0.109 by thinning, 0.943 / 0.141 by the shift (``additive_exact``: 0.941 /
        0.120); Kang, always exact, mean energy excess of the 7 folds 0.829, 0.964 and
        0.758 (the shift better on 5 of 7).
    reflow_steps
        Fine-tuning steps of one reflow after the flow is fitted (0: none): the flow is
        trained again on the pairs ``(x_0, flow(x_0))`` it makes itself, which straightens
        its paths (Liu et al. 2022; see ``perturbflow.train.reflow``).
    n_steps, solver
        Default ODE integration steps and solver at prediction (and in the calibration). The
        learned flows are nearly straight: 4 midpoint steps (8 network calls) end within
        0.01% of 20 (benchmarks/RESULTS.md, "Straightness and quality against steps").
    backbone_kwargs
        Hyper-parameters passed to the backbone.
    """

    backbone: str = "mlp"
    n_latent: int = 20
    n_hidden: int = 128
    n_layers: int = 1
    dropout_rate: float = 0.1
    gene_likelihood: Literal["nb", "zinb"] = "nb"
    vae_decoder: Literal["nonlinear", "linear"] = "nonlinear"
    vae_max_steps: int = 2000
    n_embed: int = 64
    atom_pooling: Literal["mean", "sum"] = "mean"
    set_size: int = 32
    coupling: Literal["ot", "random", "gaussian"] = "gaussian"
    flow_batch_size: int = 8
    flow_steps_per_epoch: int = 50
    flow_max_epochs: int = 20
    flow_ensemble: int = 2
    flow_lr: float = 1e-3
    ema_decay: float = 0.995
    residual_prior: bool = True
    flow_prior: Literal["own", "leave_out"] = "own"
    context_bandwidth: Literal["local", "global"] = "local"
    context_dropout: float = 0.2
    centered_correction: bool = False
    new_context_flow: Literal["auto", "probe", "off", "mean", "shape", "full"] = "auto"
    new_context_fraction: float | None = None
    new_context_condition: Literal["null", "own"] = "null"
    decode: Literal["delta", "direct"] = "delta"
    gene_offset: Literal["residual", "baseline", "prior_mean"] = "residual"
    cell_response: float = 1.0
    residual_shrinkage: bool = True
    exact_mean: bool | float | Literal["auto"] = "auto"
    exact_mean_by: Literal["zeroing", "thinning", "shift"] = "zeroing"
    reflow_steps: int = 0
    n_steps: int = 4
    solver: Literal["euler", "midpoint", "adaptive"] = "midpoint"
    backbone_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        from perturbflow._errors import PerturbFlowError

        if not isinstance(self.flow_ensemble, int) or isinstance(self.flow_ensemble, bool) or self.flow_ensemble < 1:
            raise PerturbFlowError(f"flow_ensemble={self.flow_ensemble!r} is not a whole number of at least 1")
        fraction = self.new_context_fraction
        if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or fraction < 0):
            raise PerturbFlowError(f"new_context_fraction={fraction!r} is not None or a number of at least 0")
        for name, kind in get_type_hints(type(self)).items():
            choices = get_args(kind) if get_origin(kind) is Literal else ()
            if name == "exact_mean":
                value = self.exact_mean
                if not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value <= 1:
                    continue  # a share of clipping's lift
                choices = (True, False, "auto")
            if choices and getattr(self, name) not in choices:
                allowed = ", ".join(repr(c) for c in choices)
                raise PerturbFlowError(f"{name}={getattr(self, name)!r} is not one of {allowed}")

    def to_dict(self) -> dict:
        return asdict(self)
