"""The simple baselines, in latent space, as the flow's starting point.

The flow's velocity is ``prior + backbone(...)``: with a zero backbone (its state at
initialisation) prediction shifts every control cell by the baseline's latent mean shift,
the additive model for combinations, the mean shift for a new context, the context mean
otherwise. The backbone learns what the baseline misses (interactions, changes of spread).
Every training group's prior is computed **without that group**, exactly as for a held-out
group at prediction, so the network learns to correct the baseline rather than to copy it.
"""

from __future__ import annotations

import numpy as np

GroupKey = tuple[frozenset, str]


class LatentBaselinePrior:
    """Latent mean shifts of the training groups, combined into a baseline for any group.

    Parameters
    ----------
    shifts
        ``{(atoms, context): mean latent of the group - mean latent of the context's controls}``.
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

    def to_dict(self) -> dict:
        return {"\t".join(["+".join(sorted(a)), c]): v.tolist() for (a, c), v in self.shifts.items()}

    @classmethod
    def from_dict(cls, d: dict) -> LatentBaselinePrior:
        shifts = {}
        for key, v in d.items():
            atoms, context = key.split("\t")
            shifts[(frozenset(atoms.split("+")), context)] = np.asarray(v, dtype=np.float32)
        return cls(shifts)
