"""The simple baselines as the model's starting point, in latent and in gene space.

The flow's velocity is ``prior + backbone(...)`` where ``prior`` is the baseline's latent
mean shift: the additive model for combinations, the mean shift for a new context, the
context mean otherwise. At decoding, each predicted cell is its source cell plus the
baseline's change in gene space plus the decoded difference between the flow's end point and
the baseline's latent end point. With a zero backbone (its state at initialisation) the
model therefore reproduces the gene-space baseline exactly; training learns what the baseline
misses (interactions, changes of spread). Every training group's prior is computed
**without that group**, exactly as for a held-out group at prediction, so the network
learns to correct the baseline rather than to copy it.
"""

from __future__ import annotations

import numpy as np

GroupKey = tuple[frozenset, str]


class BaselinePrior:
    """Mean shifts of the training groups, combined into a baseline for any group.

    Parameters
    ----------
    shifts
        ``{(atoms, context): mean of the group - mean of the context's controls}``, in latent
        or in log-normalised gene space.
    """

    def __init__(self, shifts: dict[GroupKey, np.ndarray]):
        self.shifts = {k: np.asarray(v, dtype=np.float32) for k, v in shifts.items()}
        self.n_latent = len(next(iter(self.shifts.values())))

    def _mean(self, keys) -> np.ndarray | None:
        vals = [self.shifts[k] for k in keys]
        return np.mean(vals, axis=0) if vals else None

    def prior(self, atoms: frozenset, context: str) -> np.ndarray:
        """The baseline latent shift of ``atoms`` in ``context``, leaving that group itself out."""
        keys = [k for k in self.shifts if k != (atoms, context)]
        singles_here = [(frozenset([a]), context) for a in atoms]
        if len(atoms) > 1 and all(k in self.shifts for k in singles_here):
            return np.sum([self.shifts[k] for k in singles_here], axis=0)  # additive
        elsewhere = self._mean([k for k in keys if k[0] == atoms])
        if elsewhere is not None:
            return elsewhere  # mean shift from the other contexts
        context_mean = self._mean([k for k in keys if k[1] == context])
        if context_mean is None:
            context_mean = self._mean(keys)
        if context_mean is None:
            context_mean = np.zeros(self.n_latent, dtype=np.float32)
        if len(atoms) > 1:  # additive over atoms, each from wherever it was seen
            parts = []
            for a in atoms:
                single = frozenset([a])
                here = self.shifts.get((single, context))
                there = self._mean([k for k in keys if k[0] == single])
                parts.append(here if here is not None else there if there is not None else context_mean)
            return np.sum(parts, axis=0)
        return context_mean

    def save(self, path) -> None:
        keys = list(self.shifts)
        np.savez_compressed(
            path,
            atoms=np.array(["+".join(sorted(a)) for a, _ in keys]),
            contexts=np.array([c for _, c in keys]),
            shifts=np.stack([self.shifts[k] for k in keys]),
        )

    @classmethod
    def load(cls, path) -> BaselinePrior:
        with np.load(path) as f:
            return cls(
                {
                    (frozenset(a.split("+")), str(c)): v
                    for a, c, v in zip(f["atoms"], f["contexts"], f["shifts"])
                }
            )
