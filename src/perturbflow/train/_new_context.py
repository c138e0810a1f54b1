"""What of the flow's correction to apply in a context new to the flow, chosen on a training
context held out of a probe flow's fit.

In a new cell type or line the flow runs under its learned null context, and whether its
correction helps there depends on the context (benchmarks/RESULTS.md, "flow parts in new
contexts": its mean move helps the monocyte folds of Kang and costs the lymphocyte folds).
So when the training data hold control cells of contexts without perturbed cells (the
contexts a user will ask about) and enough measured contexts, a probe flow is fitted without
the training context nearest to each new one (by the mean of its control latents). The
probe is run there as in a new context, and each part of its correction is scored against
the held-out context's real cells. The flow that predicts is then fitted with every
context, and a new context is given the choice of its nearest probed context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from perturbflow.data import Group
from perturbflow.metrics import energy_distance

NEW_CONTEXT_PARTS = ("off", "mean", "shape", "full")  # ties go to the earlier one
MIN_CONTEXTS = 5  # measured contexts needed to hold one out whole (a fifth of them at most)
MAX_CELLS = 256  # cells per group in the energy distances

# (control latents (n, D), atom ids, context index, prior (D,)) -> flow end points (n, D),
# the flow run under its null context
Transport = Callable[[np.ndarray, list[int], int, np.ndarray], np.ndarray]


def contexts_to_hold_out(new_means: dict[str, np.ndarray], measured_means: dict[str, np.ndarray]) -> list[str]:
    """The measured contexts nearest to the new ones (Euclidean distance between the means of
    their control latents), one per new context, at most a fifth of the measured contexts
    (taken in the order of the new contexts' names); none with fewer than
    ``MIN_CONTEXTS`` measured contexts or no new context."""
    if len(measured_means) < MIN_CONTEXTS or not new_means:
        return []
    held: list[str] = []
    for c in sorted(new_means):
        nearest = nearest_context(new_means[c], measured_means)
        if nearest not in held:
            held.append(nearest)
    return held[: max(1, len(measured_means) // MIN_CONTEXTS)]


def nearest_context(mean: np.ndarray, candidates: dict[str, np.ndarray]) -> str | None:
    """The candidate context whose control latent mean is nearest ``mean`` (``None``: no candidate)."""
    if not candidates:
        return None
    names = sorted(candidates)
    return names[int(np.argmin([((candidates[c] - mean) ** 2).sum() for c in names]))]


def apply_part(base: np.ndarray, end: np.ndarray, part: str) -> np.ndarray:
    """Control latents moved by the prior (``base``), plus ``part`` of the flow's correction
    ``end - base``: none (``"off"``), its mean over the cells, its shape (less that mean) or all."""
    correction = end - base
    if part == "off":
        return base
    if part == "mean":
        return base + correction.mean(0)
    if part == "shape":
        return base + correction - correction.mean(0)
    return end


def new_context_scores(
    transport: Transport, groups: Sequence[Group], z_all: np.ndarray, context_names: Sequence[str], seed: int
) -> dict[str, dict[str, float]]:
    """For each context of ``groups`` (held out of the probe flow's fit whole), the mean latent
    energy distance between the real cells of its groups and their prediction with each
    part of the flow's correction (``NEW_CONTEXT_PARTS``)."""
    rng = np.random.default_rng(seed)
    totals: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for g in groups:
        src = z_all[rng.choice(g.source_idx, min(len(g.source_idx), MAX_CELLS), replace=False)]
        tgt = z_all[rng.choice(g.target_idx, min(len(g.target_idx), MAX_CELLS), replace=False)]
        base, end = src + g.prior, transport(src, list(g.atom_ids), g.context, g.prior)
        row = np.array([energy_distance(apply_part(base, end, part), tgt) for part in NEW_CONTEXT_PARTS])
        name = context_names[g.context]
        totals[name] = totals.get(name, 0.0) + row
        counts[name] = counts.get(name, 0) + 1
    return {c: {p: float(v / counts[c]) for p, v in zip(NEW_CONTEXT_PARTS, t)} for c, t in totals.items()}


def best_parts(scores: dict[str, dict[str, float]]) -> dict[str, str]:
    """The part with the smallest score in each context (ties go to the earlier part of
    ``NEW_CONTEXT_PARTS``, "off" first)."""
    return {
        c: NEW_CONTEXT_PARTS[int(np.argmin(np.round([row[p] for p in NEW_CONTEXT_PARTS], 6)))]
        for c, row in scores.items()
    }
