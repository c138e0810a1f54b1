"""How much of the flow's correction to the baseline prior to keep, chosen on held-out groups."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np

from perturbflow.data import Group
from perturbflow.metrics import energy_distance

CORRECTION_SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_CELLS = 256  # cells per group in the energy distances

# (control latents (n, D), atom ids, context index, prior (D,)) -> flow end points (n, D)
Transport = Callable[[np.ndarray, list[int], int, np.ndarray], np.ndarray]


def calibration_split(groups: list[Group], seed: int) -> list[Group]:
    """Training groups held out of the flow's fit to calibrate it: up to a fifth of them.

    Only groups like the ones a trained model can be asked for are held out: every atom of a
    held-out group stays in some group that is fitted (a combination whose atoms were each
    measured, a perturbation measured in another context), because prediction refuses
    unseen atoms. Groups are drawn in random order; none are held out when there are fewer
    than 5 groups or no group qualifies.
    """
    if len(groups) < 5:
        return []
    rng = np.random.default_rng(seed)
    n = max(1, len(groups) // 5)
    atoms_of = [{int(a) for a in g.atom_ids} for g in groups]
    fitted = Counter(a for atoms in atoms_of for a in atoms)  # groups holding each atom
    held = []
    for i in rng.permutation(len(groups)):
        if all(fitted[a] > 1 for a in atoms_of[i]):
            held.append(int(i))
            fitted.subtract(atoms_of[i])
            if len(held) == n:
                break
    return [groups[i] for i in sorted(held)]


def choose_correction_scale(transport: Transport, groups: list[Group], z_all: np.ndarray, seed: int) -> float:
    """The fraction of the flow's correction that best predicts held-out groups.

    For each held-out group, control latents are moved by the baseline prior (scale 0) or by
    the baseline plus a fraction of the flow's correction; the scale with the smallest mean
    latent energy distance to the group's real cells wins (ties go to the smaller scale). A
    flow that does not generalise to new groups is thus shrunk to the baseline instead of
    hurting it.
    """
    rng = np.random.default_rng(seed)
    scores = np.zeros(len(CORRECTION_SCALES))
    for g in groups:
        src = z_all[rng.choice(g.source_idx, min(len(g.source_idx), MAX_CELLS), replace=False)]
        tgt = z_all[rng.choice(g.target_idx, min(len(g.target_idx), MAX_CELLS), replace=False)]
        z_1 = transport(src, list(g.atom_ids), g.context, g.prior)
        z_base = src + g.prior
        for i, scale in enumerate(CORRECTION_SCALES):
            scores[i] += energy_distance(z_base + scale * (z_1 - z_base), tgt)
    return float(CORRECTION_SCALES[int(np.argmin(np.round(scores, 6)))])
