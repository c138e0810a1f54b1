"""Transfer of a perturbation's effect to a context: similar contexts count more.

A perturbation seen in other contexts (cell types, cell lines, donors) is predicted in a
new context from those contexts' effects, weighted by how similar each context's control
cells are to the new context's control cells (a Nadaraya-Watson kernel estimate):

``w(c') = exp(-d(c, c') / (h * median_c'' d(c, c'')))``, with ``d`` the mean squared difference
of the contexts' mean log-normalised control expression. The estimate blends the
perturbation's own weighted effect with the weighted pooled effect of all perturbations,

``effect(p, c) = a * sum_c' w(c') effect(p, c') + (1 - a) * sum_c' w(c') pooled(c')``,

which shrinks towards the shared response of the contexts when the perturbation's own
effect does not carry over.

The specificity ``a`` is set **per perturbation** by empirical Bayes (James-Stein over the
genes, positive part): ``a = 1 - V / S``, clipped to ``[0, 1]``, with ``S`` the mean squared
distance of the perturbation's weighted effect from the pooled effect and ``V`` the part of
``S`` that is not the perturbation's own effect: ``V = sum_c' w(c')^2 (sigma2(c') + tau2)``,
the sampling noise of the perturbed cells' mean in each context (their variance over their
number) and the variance between contexts of the effect beyond the pooled one (``tau2``, its
spread over the contexts less that noise). With the effect in context ``c`` written as
``pooled(c) + mu + e(c)``, the squared error of ``shared + a (specific - shared)`` as a
prediction of a new context's effect is ``(1 - a)^2 mu^2 + a^2 V + tau2``, least at
``a = mu^2 / (mu^2 + V) = 1 - V / E[S]``: the new context's own deviation ``tau2`` is in
every choice of ``a`` alike, so it is not in ``V``. (Sessions 5-18 counted it there too,
which shrank every effect that differs between contexts once more: benchmarks/RESULTS.md,
"Session 19".) The noise of the control cells' mean is not in ``V`` either: every shift of a
context shares it, so it cancels in the distance from that context's pooled effect.
(Counting it, as sessions 5-17 did, shrank a new replicate's knock-outs to the pooled effect
where the control cells were as few as a group's: benchmarks/RESULTS.md, "Session 18".)
A strong effect that is the same in every context keeps ``a`` near 1 (the plain mean shift
of that perturbation); a weak or inconsistent one shrinks towards the pooled effect (Efron &
Morris 1973). The latent prior judges ``a`` on the latent
shifts and the sampling noise of the latent means (:meth:`ContextTransfer.in_space`), where
an effect spread thinly over many genes (a knock-out's programme) stands out of its noise
more clearly than gene by gene; the gene-space residual keeps the same ``a`` for the same
perturbation (one judgement per perturbation: benchmarks/RESULTS.md, "Session 19"). The
relative bandwidth ``h`` is **chosen from the training data** by leave-one-context-out
cross-validation (the squared error of every training group predicted from the other
contexts), so no constant is tuned per dataset; ties go to ``h = inf`` (equal weights).

**The bandwidth of each context is chosen near it** (``local_errors``). The squared error
over all genes is dominated by genes that barely move, and its average over all training
contexts lets the contexts far from a new one decide for it. So each training context's
cross-validated error is also taken in the principal axes of its own cells (the space in
which the benchmarks' energy distance compares cells), and a context is given the
bandwidth whose errors, weighted by the kernel similarity of the training contexts to it
(at the global bandwidth), are smallest. On the Kang folds this gives the lymphocytes,
whose nearest cell types respond less than they do, a wider kernel, and the monocytes a
narrower one (benchmarks/RESULTS.md, "Session 10").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

logger = logging.getLogger(__name__)

GroupKey = tuple[frozenset, str]
BANDWIDTHS = (np.inf, 1.0, 0.25, 0.1)  # relative to the median distance; inf = equal weights
SHRINK = float("nan")  # specificity set per perturbation by empirical Bayes


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
        Weight ``a`` of the perturbation's own effect against the pooled effect; ``nan`` (the
        default) sets it per perturbation by empirical Bayes from ``effects`` and ``noise``.
    effects
        ``{(atoms, context): mean shift}``, the effects that judge how consistent a
        perturbation is: log-normalised expression, or the latent for the latent prior
        (:meth:`in_space`).
    noise
        ``{(atoms, context): sampling variance of the group's mean, averaged over genes}``
        (or latent dimensions).
    local_errors
        ``{bandwidth: {training context: its leave-one-context-out error in its cells'
        principal axes}}``, from :meth:`select`; when given, each context's bandwidth is
        chosen near it (:meth:`bandwidth_in`), otherwise ``bandwidth`` serves everywhere.
    """

    control_means: dict[str, np.ndarray] = field(default_factory=dict)
    bandwidth: float = np.inf
    specificity: float = SHRINK
    effects: dict[GroupKey, np.ndarray] = field(default_factory=dict)
    noise: dict[GroupKey, float] = field(default_factory=dict)
    local_errors: dict[float, dict[str, float]] = field(default_factory=dict)

    def bandwidth_in(self, context: str, control_mean: np.ndarray | None = None) -> float:
        """The bandwidth for ``context``: of the grid, the one whose leave-one-context-out
        errors on the other training contexts, weighted by their kernel similarity to
        ``context`` at the global bandwidth, are smallest (ties to the earlier one, the
        plainer); the global bandwidth without ``local_errors``."""
        measured = sorted(c for c in next(iter(self.local_errors.values()), {}) if c != context)
        if not measured:
            return self.bandwidth
        w = self.weights(context, measured, control_mean)
        scores = {h: float(w @ np.array([errors[c] for c in measured])) for h, errors in self.local_errors.items()}
        return min(scores, key=lambda h: round(scores[h], 12))

    def in_space(self, effects: dict[GroupKey, np.ndarray], noise: dict[GroupKey, float]) -> ContextTransfer:
        """The same kernel (bandwidths, control means) with the per-perturbation shrinkage
        judged on ``effects`` and ``noise`` of another space: the latent prior's on the latent
        shifts, where an effect spread thinly over many genes stands out of the noise."""
        return replace(self, effects=dict(effects), noise=dict(noise))

    def shrinkage(self, atoms: frozenset, seen: list[str], w_seen: np.ndarray, others: list[str],
                  w_others: np.ndarray) -> float:
        """The specificity ``a`` of ``atoms`` seen in contexts ``seen`` with weights ``w_seen``.

        The global ``specificity`` when it is a number; otherwise the positive-part
        James-Stein factor of the module docstring, from the gene-space ``effects`` and
        ``noise``. A perturbation without those statistics keeps its own effect (``a = 1``).
        """
        if not np.isnan(self.specificity):
            return self.specificity
        keys = [(atoms, c) for c in seen]
        if not all(k in self.effects and k in self.noise for k in keys) or not others:
            return 1.0
        own = np.stack([self.effects[k] for k in keys])  # (K, G)
        noise = np.array([self.noise[k] for k in keys])  # (K,)
        if "_pooled" not in self.__dict__:  # the gene-space pooled effects, computed once
            self._pooled = pooled_effects(self.effects, {})  # no sizes: every group weighs 1
        pooled = self._pooled
        if any(c not in pooled for c in others):
            return 1.0
        specific = w_seen @ own  # (G,)
        shared = w_others @ np.stack([pooled[c] for c in others])  # (G,)
        # the effect beyond the pooled one in each context: the noise of the context's control
        # mean, in every shift of the context alike, cancels there
        beyond = own - np.stack([pooled[c] for c in seen])
        between = 0.0  # variance of that effect between contexts, beyond sampling noise
        if len(keys) > 1:
            between = max(0.0, float(np.mean(np.var(beyond, axis=0, ddof=1))) - float(noise.mean()))
        # what noise and the contexts' own deviations add to the spread (the module docstring)
        not_own = float(np.sum(w_seen**2 * (noise + between)))
        spread = float(np.mean((specific - shared) ** 2))
        if spread <= 0:
            return 0.0
        return float(np.clip(1.0 - not_own / spread, 0.0, 1.0))

    def weights(self, context: str, others: list[str], control_mean: np.ndarray | None = None,
                bandwidth: float | None = None) -> np.ndarray:
        """Normalised kernel weights of ``others`` for ``context`` (described by ``control_mean``),
        at ``bandwidth`` (by default the global one)."""
        bandwidth = self.bandwidth if bandwidth is None else bandwidth
        ref = control_mean if control_mean is not None else self.control_means.get(context)
        if np.isinf(bandwidth) or ref is None or any(o not in self.control_means for o in others):
            return np.full(len(others), 1.0 / len(others))
        d = np.array([np.mean((self.control_means[o] - ref) ** 2) for o in others])
        scale = np.median(d) if np.median(d) > 0 else 1.0
        logw = -d / (bandwidth * scale)
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
        carried = self.carried(atoms, context, shifts, pooled, control_mean)
        return None if carried is None else carried[0]

    def carried(self, atoms: frozenset, context: str, shifts: dict[GroupKey, np.ndarray],
                pooled: dict[str, np.ndarray], control_mean: np.ndarray | None = None) -> tuple[np.ndarray, float] | None:
        """:meth:`transfer`'s effect and the share ``a`` of its own effect it keeps for
        ``atoms`` in ``context`` (the rest is the pooled effect), or ``None`` if never seen."""
        blend = self._blend(atoms, context, shifts, pooled, control_mean)
        if blend is None:
            return None
        specific, shared, a = blend
        return (specific if shared is None else a * specific + (1 - a) * shared), a

    def _blend(self, atoms, context, shifts, pooled, control_mean):
        """The weighted own effect of ``atoms`` from the other contexts, the weighted pooled
        effect (``None`` where it is not mixed in) and the specificity (1 there); ``None`` if
        never seen."""
        seen = {c: v for (a, c), v in shifts.items() if a == atoms and c != context}
        if not seen:
            return None
        others = sorted(c for c in pooled if c != context)
        w = dict(zip(others, self.weights(context, others, control_mean, self.bandwidth_in(context, control_mean))))
        w_seen = np.array([w.get(c, 0.0) for c in seen])
        if w_seen.sum() <= 0:
            w_seen = np.ones(len(seen))
        w_seen = w_seen / w_seen.sum()
        specific = np.tensordot(w_seen, np.stack(list(seen.values())), axes=1)
        w_others = np.array([w[c] for c in others])
        a = self.shrinkage(atoms, list(seen), w_seen, others, w_others)
        if a >= 1.0 or not others:
            return specific, None, 1.0
        return specific, np.tensordot(w_others, np.stack([pooled[c] for c in others]), axes=1), a

    @classmethod
    def select(
        cls,
        shifts: dict[GroupKey, np.ndarray],
        sizes: dict[GroupKey, int],
        control_means: dict[str, np.ndarray],
        noise: dict[GroupKey, float] | None = None,
        axes: dict[str, np.ndarray] | None = None,
    ) -> tuple[ContextTransfer, dict[float, float]]:
        """Choose the bandwidth by leave-one-context-out squared error.

        ``shifts`` are the gene-space effects of the training groups and ``noise`` their
        sampling variances (see the class); the specificity is set per perturbation from
        them. Returns the chosen transfer and the cross-validated mean squared error of every
        bandwidth tried (empty when fewer than two contexts hold perturbed cells, in which case
        the plain weights are kept). Ties go to the earlier bandwidth of the grid (the
        plainer one).

        With ``axes`` (``{context: (k, G) principal axes of its cells}``, see
        :func:`~perturbflow.train.context_axes`), the same held-out predictions are also
        scored in each held context's axes, and the transfer chooses each context's
        bandwidth near it from those errors (``local_errors``).
        """
        noise, axes = noise or {}, axes or {}
        contexts = sorted({c for _, c in shifts})
        plain = cls(control_means, effects=dict(shifts), noise=dict(noise))
        if len(contexts) < 2:
            return plain, {}
        folds = []  # (the held context's groups, the other contexts' shifts and pooled effects)
        for held in contexts:
            rest = {k: v for k, v in shifts.items() if k[1] != held}
            folds.append(([(k, v) for k, v in shifts.items() if k[1] == held], rest, pooled_effects(rest, sizes)))
        scores: dict[float, float] = {}
        local: dict[float, dict[str, float]] = {}  # {h: {held context: mean error in its axes}}
        for h in BANDWIDTHS:
            errors, in_axes = [], {}
            for held_groups, rest, pooled in folds:
                candidate = cls(control_means, h, SHRINK, rest, noise)
                for (atoms, c), true in held_groups:
                    pred = candidate.transfer(atoms, c, rest, pooled)
                    if pred is not None:
                        errors.append(np.mean((pred - true) ** 2))
                        if c in axes:
                            along = axes[c] @ (pred - true)
                            in_axes.setdefault(c, []).append(float(along @ along))
            if errors:
                scores[h] = float(np.mean(errors))
            if in_axes:
                local[h] = {c: float(np.mean(v)) for c, v in in_axes.items()}
        if not scores:
            return plain, {}
        best = min(scores, key=lambda k: round(scores[k], 12))
        chosen = cls(control_means, best, SHRINK, dict(shifts), dict(noise), local)
        logger.info("context transfer chosen by leave-one-context-out: bandwidth %s%s", best,
                    " (each context's chosen near it)" if local else "")
        return chosen, scores


def pooled_effects(shifts: dict[GroupKey, np.ndarray], sizes: dict[GroupKey, int]) -> dict[str, np.ndarray]:
    """Cell-weighted mean effect of all perturbations of each context (a group missing from
    ``sizes`` weighs 1)."""
    out = {}
    for c in sorted({c for _, c in shifts}):
        keys = [k for k in shifts if k[1] == c]
        w = np.array([sizes.get(k, 1) for k in keys], dtype=np.float64)
        out[c] = np.tensordot(w / w.sum(), np.stack([shifts[k] for k in keys]), axes=1)
    return out
