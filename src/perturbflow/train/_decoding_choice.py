"""How much of each predicted group's mean to keep exact in a new context, fitted on every
measured training context.

A predicted cell is its source cell's log profile moved by its decoded change, clipped at 0.
Clipping lifts the mean of a gene that falls; keeping the group's mean where the moves add
up to (``exact_mean``) puts that lift back. That helps where the transferred falls of genes
carry over to the new context and costs where they are too large: over the Kang folds it
helped the monocytes and cost some lymphocytes (benchmarks/RESULTS.md, "Session 11"). So
every measured training context is predicted as a new context would be, from the other
contexts alone (the prior's latent shift and gene-space residual, without the flow),
decoded both ways, and each way is scored against its real perturbed cells.

A new context puts back the share of the lift that best predicted the measured contexts'
real group means (:func:`fitted_share`, a least-squares coefficient in ``[0, 1]``): which way
is right differs from context to context and is not predictable from the others (over
sessions 13-15's Kang runs a context preferred the same way as a training context and as the
held-out one, whatever its neighbours did), so a choice of one way or the other was wrong on
NK in every seed and flipped on CD14+Mono; the fitted share (0.37-0.52 there) hedges, and
beat both ways and the choice on the energy distance (benchmarks/RESULTS.md, "Session 16").
The energy distances in principal components of the group's real cells
(:func:`choose_decoding`, sessions 13-15's rule) are kept in the scores for reports and for
models saved before the share.

Equal weights over the measured contexts, not the context transfer's kernel weights: a
measured context predicted from the others has lost its nearest neighbour when that
neighbour is the new context itself (it holds no perturbed cells), so the contexts nearest a
new one are scored on the farthest transfers (benchmarks/RESULTS.md, "Session 13").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from perturbflow.data import Group
from perturbflow.metrics import energy_distance
from perturbflow.train._new_context import MAX_CELLS, real_cells_pca

DECODINGS = ("exact", "clipped")  # ties go to the first
# per context, beside each decoding's score, the sums of the least-squares fit of the real
# group means on the two decodings' (see fitted_share)
LIFT_FIT, LIFT_SQUARED = "lift_fit", "lift_squared"
MAX_GROUPS = 16  # groups per context scored, the largest first

# (group, source rows, exact_mean) -> the group's prediction for those source cells,
# log-normalised as the protocol reads it, (n, G)
Predicted = Callable[[Group, np.ndarray, bool], np.ndarray]


def decoding_scores(
    groups: Sequence[Group],
    context_names: Sequence[str],
    real: Callable[[np.ndarray], np.ndarray],
    predicted: Predicted,
    seed: int,
) -> dict[str, dict[str, float]]:
    """``{context: {decoding: mean energy distance over its groups}}`` for each context of
    ``groups`` (each group predicted without its own context, as a new context is), with
    the sums :func:`fitted_share` takes: over the context's groups, ``lift_fit`` =
    ``<real mean - clipped mean, exact mean - clipped mean>`` and ``lift_squared`` =
    ``||exact mean - clipped mean||^2`` (group means of log-normalised expression).

    ``real(rows)`` is the log-normalised expression of those cells; at most ``MAX_GROUPS``
    groups per context (those with the most perturbed cells) and ``MAX_CELLS`` cells per
    group are used.
    """
    rng = np.random.default_rng(seed)
    by_context: dict[str, list[Group]] = {}
    for g in groups:
        by_context.setdefault(context_names[g.context], []).append(g)
    scores = {}
    for name in sorted(by_context):
        chosen = sorted(by_context[name], key=lambda g: (-len(g.target_idx), g.label))[:MAX_GROUPS]
        totals, fit, squared = np.zeros(len(DECODINGS)), 0.0, 0.0
        for g in chosen:
            src = np.sort(rng.choice(g.source_idx, min(len(g.source_idx), MAX_CELLS), replace=False))
            tgt = np.sort(rng.choice(g.target_idx, min(len(g.target_idx), MAX_CELLS), replace=False))
            real_src, real_tgt = real(src), real(tgt)
            pca = real_cells_pca(real_src, real_tgt, seed)
            tgt_pcs = pca.transform(real_tgt)
            exact, clipped = (predicted(g, src, d == "exact") for d in DECODINGS)
            totals += [energy_distance(pca.transform(x), tgt_pcs) for x in (exact, clipped)]
            lift = exact.mean(0) - clipped.mean(0)  # (G,) what keeping the mean exact takes away
            fit += float(np.dot(real_tgt.mean(0) - clipped.mean(0), lift))
            squared += float(np.dot(lift, lift))
        scores[name] = dict(zip(DECODINGS, (totals / len(chosen)).tolist()))
        scores[name].update({LIFT_FIT: fit, LIFT_SQUARED: squared})
    return scores


def choose_decoding(scores: dict[str, dict[str, float]], contexts: Sequence[str]) -> str:
    """The decoding whose ``scores`` averaged over ``contexts`` (those of them that were
    scored) are smallest; ``"exact"`` without any, and on a tie."""
    used = [c for c in contexts if c in scores]
    if not used:
        return DECODINGS[0]
    totals = [float(np.mean([scores[c][d] for c in used])) for d in DECODINGS]
    return DECODINGS[int(np.argmin(np.round(totals, 9)))]


def fitted_share(scores: dict[str, dict[str, float]], contexts: Sequence[str]) -> float:
    """The share of clipping's lift to take away in a new context: the least-squares
    coefficient of the measured contexts' real group means on the exact decoding's, both
    less the clipped decoding's (``sum lift_fit / sum lift_squared`` over ``contexts``),
    clipped to ``[0, 1]``. The real cells' sampling noise is independent of the prediction
    and does not bias it. 1 without any scored context, or where no scored context was
    clipped at all."""
    used = [scores[c] for c in contexts if c in scores and LIFT_SQUARED in scores[c]]
    squared = sum(s[LIFT_SQUARED] for s in used)
    if squared <= 0:
        return 1.0
    return float(np.clip(sum(s[LIFT_FIT] for s in used) / squared, 0.0, 1.0))


def new_context_exact_mean(scores: dict[str, dict[str, float]], contexts: Sequence[str]) -> bool | float:
    """What a new context's groups put back of clipping's lift, from the ``scores`` of the
    measured ``contexts``: the :func:`fitted_share` where every one of them recorded the fit's
    sums; otherwise (scores saved before session 16) whether :func:`choose_decoding` takes
    the exact decoding, as models of sessions 13-15 did."""
    if all(LIFT_SQUARED in scores[c] for c in contexts if c in scores):
        return fitted_share(scores, contexts)
    return choose_decoding(scores, contexts) == "exact"
