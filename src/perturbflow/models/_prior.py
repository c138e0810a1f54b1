"""The simple baselines as the model's starting point, in latent and in gene space.

The flow's velocity is ``prior + backbone(...)`` where ``prior`` is the baseline's latent
mean shift: the additive model for combinations, the mean shift for a new context, the
context mean otherwise. At decoding, each predicted cell is its source cell plus the
baseline's change in gene space plus the decoded difference between the flow's end point and
the baseline's latent end point. With a zero backbone (its state at initialisation) the
model therefore reproduces the gene-space baseline exactly; training learns what the baseline
misses (interactions, changes of spread). Every training group's prior is computed
**without that group**, exactly as for a held-out group at prediction, so the network
learns to correct the baseline rather than to copy it. A perturbation seen in other
contexts is carried over by :class:`~perturbflow.models._transfer.ContextTransfer`
(similar contexts weigh more; its settings are cross-validated on the training contexts).
"""

from __future__ import annotations

import numpy as np

from perturbflow.models._transfer import ContextTransfer, pooled_effects

GroupKey = tuple[frozenset, str]


class BaselinePrior:
    """Mean shifts of the training groups, combined into a baseline for any group.

    Parameters
    ----------
    shifts
        ``{(atoms, context): mean of the group - mean of the context's controls}``, in latent
        or in log-normalised gene space.
    sizes
        Cells per group (weights of the pooled effect of a context); equal when ``None``.
    transfer
        How effects move between contexts; the plain mean shift when ``None``.
    carried_scale
        The share kept of what is carried from other contexts (see
        ``perturbflow.models._shrinkage``); a combination of singles measured in its own
        context takes the singles' whole shifts.
    """

    def __init__(
        self,
        shifts: dict[GroupKey, np.ndarray],
        sizes: dict[GroupKey, int] | None = None,
        transfer: ContextTransfer | None = None,
        carried_scale: float = 1.0,
    ):
        self.shifts = {k: np.asarray(v, dtype=np.float32) for k, v in shifts.items()}
        self.sizes = {k: int(sizes[k]) if sizes else 1 for k in self.shifts}
        self.transfer = transfer or ContextTransfer()
        self.n_latent = len(next(iter(self.shifts.values())))
        self.carried_scale = float(carried_scale)
        # the transfer reads only *other* contexts, which never hold the group left out
        self.pooled = pooled_effects(self.shifts, self.sizes)

    def _mean(self, keys) -> np.ndarray | None:
        vals = [self.shifts[k] for k in keys]
        return np.mean(vals, axis=0) if vals else None

    def specificity(self, atoms: frozenset, context: str, control_mean: np.ndarray | None = None) -> float | None:
        """The share of its own effect (against the pooled one) that :meth:`prior` keeps for
        ``atoms`` carried from other contexts; ``None`` where it is not carried (a combination
        of singles measured in ``context``, or a perturbation measured nowhere else)."""
        return self.prior_and_specificity(atoms, context, control_mean)[1]

    def prior(self, atoms: frozenset, context: str, control_mean: np.ndarray | None = None) -> np.ndarray:
        """The baseline shift of ``atoms`` in ``context``, leaving that group itself out.

        ``control_mean`` (mean log-normalised expression of the context's control cells)
        describes a context for the transfer between contexts; by default the one stored at
        training is used.
        """
        return self.prior_and_specificity(atoms, context, control_mean)[0]

    def prior_and_specificity(self, atoms: frozenset, context: str,
                              control_mean: np.ndarray | None = None) -> tuple[np.ndarray, float | None]:
        """:meth:`prior` and :meth:`specificity` at once (one kernel blend for both)."""
        singles_here = [(frozenset([a]), context) for a in atoms]
        if len(atoms) > 1 and all(k in self.shifts for k in singles_here):
            return np.sum([self.shifts[k] for k in singles_here], axis=0), None  # additive
        carried = self.transfer.carried(atoms, context, self.shifts, self.pooled, control_mean)
        if carried is not None:  # from the other contexts, similar ones first
            return (self.carried_scale * carried[0]).astype(np.float32), carried[1]
        return self._not_carried(atoms, context), None

    def _not_carried(self, atoms: frozenset, context: str) -> np.ndarray:
        """The prior of ``atoms`` measured in no other context: the context's mean shift, or
        for a combination the sum of its singles wherever each was measured."""
        keys = [k for k in self.shifts if k != (atoms, context)]
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
                there = None if there is None else self.carried_scale * there
                parts.append(here if here is not None else there if there is not None else context_mean)
            return np.sum(parts, axis=0)
        return context_mean

    def save(self, path) -> None:
        keys = list(self.shifts)
        t = self.transfer
        names = sorted(t.control_means)
        local = sorted(next(iter(t.local_errors.values()), {}))
        np.savez_compressed(
            path,
            atoms=np.array(["+".join(sorted(a)) for a, _ in keys]),
            contexts=np.array([c for _, c in keys]),
            shifts=np.stack([self.shifts[k] for k in keys]),
            sizes=np.array([self.sizes[k] for k in keys]),
            carried_scale=np.array(self.carried_scale),
            transfer=np.array([t.bandwidth, t.specificity]),
            control_contexts=np.array(names, dtype=str),
            control_means=np.stack([t.control_means[c] for c in names]) if names else np.zeros((0, 0)),
            # the gene-space statistics behind the per-perturbation shrinkage
            effect_atoms=np.array(["+".join(sorted(a)) for a, _ in t.effects], dtype=str),
            effect_contexts=np.array([c for _, c in t.effects], dtype=str),
            effects=np.stack(list(t.effects.values())) if t.effects else np.zeros((0, 0)),
            effect_noise=np.array([t.noise.get(k, np.nan) for k in t.effects]),
            # each context's bandwidth chosen near it: the cross-validated errors per bandwidth
            local_bandwidths=np.array(list(t.local_errors), dtype=np.float64),
            local_contexts=np.array(local, dtype=str),
            local_errors=np.array([[t.local_errors[h][c] for c in local] for h in t.local_errors]),
        )

    @classmethod
    def load(cls, path) -> BaselinePrior:
        with np.load(path) as f:
            keys = [(frozenset(a.split("+")), str(c)) for a, c in zip(f["atoms"], f["contexts"])]
            if "transfer" not in f:  # saved before the context transfer existed
                return cls(dict(zip(keys, f["shifts"])))
            means = {str(c): m for c, m in zip(f["control_contexts"], f["control_means"])}
            bandwidth, specificity = (float(x) for x in f["transfer"])
            effects, noise = {}, {}
            if "effects" in f:
                effect_keys = [(frozenset(a.split("+")), str(c)) for a, c in zip(f["effect_atoms"], f["effect_contexts"])]
                effects = dict(zip(effect_keys, f["effects"]))
                noise = {k: float(v) for k, v in zip(effect_keys, f["effect_noise"]) if np.isfinite(v)}
            local = {}
            if "local_errors" in f:  # saved since session 10
                contexts = [str(c) for c in f["local_contexts"]]
                local = {float(h): dict(zip(contexts, row.tolist())) for h, row in zip(f["local_bandwidths"], f["local_errors"])}
            carried = float(f["carried_scale"]) if "carried_scale" in f else 1.0  # saved since session 15
            return cls(
                dict(zip(keys, f["shifts"])),
                dict(zip(keys, f["sizes"].tolist())),
                ContextTransfer(means, bandwidth, specificity, effects, noise, local),
                carried,
            )
