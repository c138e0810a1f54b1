"""Transfer of a perturbation's effect to a context: similar contexts count more.

A perturbation seen in other contexts (cell types, cell lines, donors) is predicted in a
new context from those contexts' effects, weighted by how similar each context's control
cells are to the new context's control cells (a Nadaraya-Watson kernel estimate):

``w(c') = exp(-d(c, c') / (h * median_c'' d(c, c'')))``, with ``d`` the mean squared difference
of the contexts' mean log-normalised control expression. The estimate blends the
perturbation's own weighted effect with the weighted pooled effect of all perturbations,

``effect(p, c) = a * sum_c' w(c') effect(p, c') + (1 - a) * sum_c' w(c') pooled(c')``,

which shrinks towards the shared response of the contexts when the perturbation's own
effect does not carry over. The relative bandwidth ``h`` and the specificity ``a`` are
**chosen from the training data** by leave-one-context-out cross-validation (the squared
error of every training group predicted from the other contexts), so no constant is tuned
per dataset: ``h = inf, a = 1`` is the plain mean shift of the other contexts, and it is
what the selection keeps unless another setting predicts held-out contexts better.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

GroupKey = tuple[frozenset, str]
BANDWIDTHS = (np.inf, 1.0, 0.25, 0.1)  # relative to the median distance; inf = equal weights
SPECIFICITIES = (1.0, 0.75, 0.5, 0.25, 0.0)  # weight of the perturbation's own effect


@dataclass
class ContextTransfer:
    """Kernel weights over contexts and the blend of specific and pooled effects.

    Parameters
    ----------
    control_means
        ``{context: mean log-normalised expression of its control cells}``.
    bandwidth
        Relative kernel bandwidth ``h`` (``inf``: every context weighs the same).
    specificity
        Weight ``a`` of the perturbation's own effect against the pooled effect.
    """

    control_means: dict[str, np.ndarray] = field(default_factory=dict)
    bandwidth: float = np.inf
    specificity: float = 1.0

    def weights(self, context: str, others: list[str], control_mean: np.ndarray | None = None) -> np.ndarray:
        """Normalised kernel weights of ``others`` for ``context`` (described by ``control_mean``)."""
        ref = control_mean if control_mean is not None else self.control_means.get(context)
        if np.isinf(self.bandwidth) or ref is None or any(o not in self.control_means for o in others):
            return np.full(len(others), 1.0 / len(others))
        d = np.array([np.mean((self.control_means[o] - ref) ** 2) for o in others])
        scale = np.median(d) if np.median(d) > 0 else 1.0
        logw = -d / (self.bandwidth * scale)
        w = np.exp(logw - logw.max())
        return w / w.sum()

    def transfer(
        self,
        atoms: frozenset,
        context: str,
        shifts: dict[GroupKey, np.ndarray],
        pooled: dict[str, np.ndarray],
        control_mean: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """The effect of ``atoms`` in ``context`` from the other contexts, or ``None`` if never seen."""
        seen = {c: v for (a, c), v in shifts.items() if a == atoms and c != context}
        if not seen:
            return None
        others = sorted(c for c in pooled if c != context)
        w = dict(zip(others, self.weights(context, others, control_mean)))
        w_seen = np.array([w.get(c, 0.0) for c in seen])
        if w_seen.sum() <= 0:
            w_seen = np.ones(len(seen))
        specific = np.tensordot(w_seen / w_seen.sum(), np.stack(list(seen.values())), axes=1)
        if self.specificity >= 1.0 or not others:
            return specific
        shared = np.tensordot(np.array([w[c] for c in others]), np.stack([pooled[c] for c in others]), axes=1)
        return self.specificity * specific + (1 - self.specificity) * shared

    @classmethod
    def select(
        cls,
        shifts: dict[GroupKey, np.ndarray],
        sizes: dict[GroupKey, int],
        control_means: dict[str, np.ndarray],
    ) -> tuple[ContextTransfer, dict[tuple[float, float], float]]:
        """Choose bandwidth and specificity by leave-one-context-out squared error.

        Returns the chosen transfer and the cross-validated mean squared error of every
        setting tried (empty when fewer than two contexts hold perturbed cells, in which case
        the plain mean shift is kept). Ties go to the earlier setting of the grid (the
        plainer one).
        """
        contexts = sorted({c for _, c in shifts})
        if len(contexts) < 2:
            return cls(control_means), {}
        folds = []  # (the held context's groups, the other contexts' shifts and pooled effects)
        for held in contexts:
            rest = {k: v for k, v in shifts.items() if k[1] != held}
            folds.append(([(k, v) for k, v in shifts.items() if k[1] == held], rest, pooled_effects(rest, sizes)))
        scores: dict[tuple[float, float], float] = {}
        for h in BANDWIDTHS:
            for a in SPECIFICITIES:
                candidate = cls(control_means, h, a)
                errors = []
                for held_groups, rest, pooled in folds:
                    for (atoms, c), true in held_groups:
                        pred = candidate.transfer(atoms, c, rest, pooled)
                        if pred is not None:
                            errors.append(np.mean((pred - true) ** 2))
                if errors:
                    scores[(h, a)] = float(np.mean(errors))
        if not scores:
            return cls(control_means), {}
        best = min(scores, key=lambda k: round(scores[k], 12))
        logger.info("context transfer chosen by leave-one-context-out: bandwidth %s, specificity %.2f", *best)
        return cls(control_means, *best), scores


def pooled_effects(shifts: dict[GroupKey, np.ndarray], sizes: dict[GroupKey, int]) -> dict[str, np.ndarray]:
    """Cell-weighted mean effect of all perturbations of each context."""
    out = {}
    for c in sorted({c for _, c in shifts}):
        keys = [k for k in shifts if k[1] == c]
        w = np.array([sizes.get(k, 1) for k in keys], dtype=np.float64)
        out[c] = np.tensordot(w / w.sum(), np.stack([shifts[k] for k in keys]), axes=1)
    return out
