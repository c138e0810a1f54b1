"""Simple baselines that predict cells with the same output contract as the model.

Every baseline learns, from training counts, one change of mean log-normalised expression
(a *delta*) per (perturbation, context) it is asked about, and predicts by adding that delta
to the log-normalised expression of each given control cell:

``x_pred = expm1(max(log1p(x_ctrl / t * 1e4) + delta, 0)) * t / 1e4``

with ``t`` the control cell's total count, so a prediction is one non-negative
counts-scale cell per (control cell, perturbation), with the control cell's library size.
Baselines differ only in :meth:`Baseline.delta`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from perturbflow._errors import PerturbFlowError
from perturbflow.data import get_counts, parse_perturbation
from perturbflow.data._expression import (
    TARGET_SUM,
    group_means,
    log_normalize_rows,
    mean_exact_shift,
    row_totals,
)
from perturbflow.metrics._groups import (
    as_key_list,
    cell_contexts,
    check_obs_key,
    group_codes,
)

logger = logging.getLogger(__name__)

Condition = tuple[frozenset[str], str]  # (atoms, context)

_BASELINES: dict[str, type[Baseline]] = {}
_PREDICT_CHUNK = 2048


def register_baseline(name: str) -> Callable[[type[Baseline]], type[Baseline]]:
    """Class decorator registering a :class:`Baseline` subclass under ``name``."""

    def decorator(cls: type[Baseline]) -> type[Baseline]:
        if name in _BASELINES:
            owner = _BASELINES[name].__name__
            raise ValueError(f"baseline {name!r} is already registered ({owner})")
        cls.baseline_name = name
        _BASELINES[name] = cls
        return cls

    return decorator


def get_baseline(name: str) -> type[Baseline]:
    """The baseline class registered under ``name``; an unknown name lists the known ones."""
    try:
        return _BASELINES[name]
    except KeyError:
        known = ", ".join(sorted(_BASELINES))
        raise PerturbFlowError(f"unknown baseline {name!r}; known baselines: {known}") from None


def list_baselines() -> list[str]:
    """Names of the registered baselines."""
    return sorted(_BASELINES)


class Baseline:
    """A predictor from mean effects; subclasses define :meth:`delta`.

    After :meth:`fit` it holds, on log-normalised expression, the control mean of each context
    (``ctrl_mean``), the observed effect ``mean(p, c) - ctrl_mean[c]`` of every training
    (perturbation, context) with controls (``effects``, keyed by ``(atoms, context)``), the
    pooled effect of all perturbed cells of each context (``context_effect``) and of all
    perturbed cells of all contexts, each against its own context's control
    (``train_effect``).
    """

    baseline_name: str = ""

    def __init__(self) -> None:
        self.genes: pd.Index | None = None

    def fit(
        self,
        adata_train: AnnData,
        perturbation_key: str,
        control_value: str,
        context_keys: str | Sequence[str] | None = None,
        layer: str | None = None,
    ) -> Baseline:
        """Learn mean effects from training counts.

        Parameters
        ----------
        adata_train
            Training cells: counts in ``X`` or ``layers[layer]``, perturbation labels in
            ``obs[perturbation_key]``, context columns.
        perturbation_key
            Column of ``obs`` with perturbation labels (``A+B`` combinations allowed).
        control_value
            Label of control cells.
        context_keys
            Columns of ``obs`` defining the context; ``None`` for a single context.
        layer
            Layer holding counts; ``None`` uses ``X``.

        Returns
        -------
        ``self``, fitted.
        """
        self.perturbation_key = perturbation_key
        self.control_value = control_value
        self.context_keys = as_key_list(context_keys)
        for key in [perturbation_key, *self.context_keys]:
            check_obs_key(adata_train, key, "key", "training AnnData")
        labels = adata_train.obs[perturbation_key].astype(str).to_numpy()
        atoms_of = {lab: parse_perturbation(lab, control_value) for lab in pd.unique(labels)}
        keys = np.array(["+".join(sorted(atoms_of[lab])) for lab in labels], dtype=object)
        codes, groups = group_codes(keys, cell_contexts(adata_train, self.context_keys))
        means = group_means(log_normalize_rows(get_counts(adata_train, layer)), codes, len(groups))
        n_cells = np.bincount(codes, minlength=len(groups))

        self.genes = adata_train.var_names.copy()
        self.ctrl_mean = {c: means[i] for i, (p, c) in enumerate(groups) if p == ""}
        if not self.ctrl_mean:
            raise PerturbFlowError(
                f"no control cells labelled {control_value!r} in the training data"
            )
        self.effects: dict[Condition, np.ndarray] = {}
        self.n_cells: dict[Condition, int] = {}
        for i, (p, c) in enumerate(groups):
            if p == "":
                continue
            if c not in self.ctrl_mean:
                logger.warning("context %r has perturbed cells but no controls; skipped", c)
                continue
            condition = (frozenset(p.split("+")), c)
            self.effects[condition] = means[i] - self.ctrl_mean[c]
            self.n_cells[condition] = int(n_cells[i])
        if not self.effects:
            raise PerturbFlowError(
                "training data has no perturbed cells in a context with control cells"
            )
        self.context_effect = {
            c: self._pooled([k for k in self.effects if k[1] == c])
            for c in {k[1] for k in self.effects}
        }
        self.train_effect = self._pooled(list(self.effects))
        self._after_fit()
        return self

    def _pooled(self, conditions: list[Condition]) -> np.ndarray:
        """Cell-weighted mean effect of the given conditions."""
        weights = np.array([self.n_cells[k] for k in conditions], dtype=np.float64)
        stacked = np.stack([self.effects[k] for k in conditions])  # (M, G)
        return weights @ stacked / weights.sum()

    def _after_fit(self) -> None:
        """Hook for baselines that learn more from the fitted effects."""

    def observed_effect(self, atoms: frozenset[str], context: str) -> np.ndarray | None:
        """The effect of ``atoms`` in ``context`` if observed there, else its mean over the
        contexts where it was observed, else ``None``."""
        if (atoms, context) in self.effects:
            return self.effects[(atoms, context)]
        seen = [e for (a, _), e in self.effects.items() if a == atoms]
        return np.mean(seen, axis=0) if seen else None

    def delta(self, atoms: frozenset[str], context: str) -> np.ndarray:
        """Predicted change of mean log-normalised expression, shape ``(n_genes,)``."""
        raise NotImplementedError

    def cell_delta(self, atoms: frozenset[str], context: str, logx, rows: np.ndarray) -> np.ndarray:
        """The shift added to the log-normalised control cells ``logx[rows]`` of ``context``
        (before clipping at 0); :meth:`delta` by default."""
        return self.delta(atoms, context)

    def predict(
        self,
        control_adata: AnnData,
        perturbations: Sequence[str],
        layer: str | None = None,
    ) -> AnnData:
        """Predict one cell per control cell and perturbation.

        Parameters
        ----------
        control_adata
            Control cells (counts) carrying the training context columns; it must hold all
            training genes (it is subset and reordered to them).
        perturbations
            Labels to predict (``A+B`` for combinations).
        layer
            Layer of ``control_adata`` holding counts; ``None`` uses ``X``.

        Returns
        -------
        AnnData with ``n_cells * len(perturbations)`` cells (all cells of the first
        perturbation, then of the second, ...): non-negative counts-scale float32 ``X`` over
        the training genes, ``obs[perturbation_key]`` the label and the context columns of the
        source cells.
        """
        if self.genes is None:
            raise PerturbFlowError(
                f"baseline {self.baseline_name!r} is not fitted; call fit first"
            )
        perturbations = [str(p) for p in perturbations]
        if not perturbations:
            raise PerturbFlowError("no perturbations to predict")
        if control_adata.n_obs == 0:
            raise PerturbFlowError("no control cells given")
        missing = self.genes.difference(control_adata.var_names)
        if len(missing):
            raise PerturbFlowError(
                f"control cells lack {len(missing)} of the {len(self.genes)} training genes"
            )
        for key in self.context_keys:
            check_obs_key(control_adata, key, "context key", "control AnnData")
        columns = control_adata.var_names.get_indexer(self.genes)
        counts = get_counts(control_adata, layer)[:, columns]
        totals = row_totals(counts)
        logx = log_normalize_rows(counts)
        contexts = cell_contexts(control_adata, self.context_keys)
        ctx_names, ctx_codes = np.unique(contexts.astype(str), return_inverse=True)
        atoms = [parse_perturbation(p, self.control_value) for p in perturbations]
        deltas = np.stack(
            [np.stack([self.cell_delta(a, c, logx, ctx_codes == i) for a in atoms]) for i, c in enumerate(ctx_names)]
        )  # (n_ctx, n_perts, G)
        n_cells, n_genes = control_adata.n_obs, len(self.genes)
        out = np.empty((len(perturbations) * n_cells, n_genes), dtype=np.float32)
        for start in range(0, n_cells, _PREDICT_CHUNK):
            stop = min(start + _PREDICT_CHUNK, n_cells)
            block = logx[start:stop]
            block = block.toarray() if sp.issparse(block) else np.asarray(block)  # (B, G)
            scale = (totals[start:stop] / TARGET_SUM)[:, None]
            for j in range(len(perturbations)):
                value = np.maximum(block + deltas[ctx_codes[start:stop], j], 0.0)
                out[j * n_cells + start : j * n_cells + stop] = np.expm1(value) * scale
        tile = np.tile(np.arange(n_cells), len(perturbations))
        obs = control_adata.obs.iloc[tile][self.context_keys].copy()
        obs[self.perturbation_key] = np.repeat(perturbations, n_cells)
        sources = control_adata.obs_names[tile]
        labels = obs[self.perturbation_key]
        obs.index = [f"{cell}-{p}" for p, cell in zip(labels, sources, strict=True)]
        return AnnData(X=out, obs=obs, var=pd.DataFrame(index=self.genes.copy()))


@register_baseline("control")
class ControlBaseline(Baseline):
    """No change: every perturbation predicts its control cells."""

    def delta(self, atoms: frozenset[str], context: str) -> np.ndarray:
        return np.zeros(len(self.genes))


@register_baseline("train_mean")
class TrainMeanBaseline(Baseline):
    """The mean effect of all training perturbed cells, pooled over contexts."""

    def delta(self, atoms: frozenset[str], context: str) -> np.ndarray:
        return np.zeros(len(self.genes)) if not atoms else self.train_effect


@register_baseline("context_mean")
class ContextMeanBaseline(Baseline):
    """The mean effect of the training perturbed cells of the context (else ``train_mean``)."""

    def delta(self, atoms: frozenset[str], context: str) -> np.ndarray:
        if not atoms:
            return np.zeros(len(self.genes))
        return self.context_effect.get(context, self.train_effect)


@register_baseline("mean_shift")
class MeanShiftBaseline(Baseline):
    """The perturbation's mean effect over the *other* contexts where it was observed.

    Falls back to ``train_mean`` when it was observed in no other context.
    """

    def delta(self, atoms: frozenset[str], context: str) -> np.ndarray:
        if not atoms:
            return np.zeros(len(self.genes))
        others = [e for (a, c), e in self.effects.items() if a == atoms and c != context]
        return np.mean(others, axis=0) if others else self.train_effect


@register_baseline("additive")
class AdditiveBaseline(Baseline):
    """A combination's effect is the sum of its atoms' effects.

    A perturbation observed in the context predicts its own observed effect. Otherwise each
    atom contributes its single effect in the context if observed there, else its mean over
    the contexts where it was observed, else the ``train_mean`` effect.
    """

    def delta(self, atoms: frozenset[str], context: str) -> np.ndarray:
        if not atoms:
            return np.zeros(len(self.genes))
        if (atoms, context) in self.effects:
            return self.effects[(atoms, context)]
        total = np.zeros(len(self.genes))
        for atom in atoms:
            single = self.observed_effect(frozenset([atom]), context)
            total += self.train_effect if single is None else single
        return total


@register_baseline("additive_exact")
class AdditiveExactBaseline(AdditiveBaseline):
    """The additive model taken exactly on the mean of log-normalised expression.

    Adding a mean change to every control cell and clipping at 0 (``additive``) lifts the
    zeros of a gene that goes down, so its predicted mean misses the target. Here, per gene,
    the shift ``s`` is the one whose clipped cells' mean is ``max(control mean + delta, 0)``
    (found by bisection; the clipped mean increases with ``s``): the mean-level additive model
    most papers report, at some cost on distribution metrics.
    """

    def cell_delta(self, atoms: frozenset[str], context: str, logx, rows: np.ndarray) -> np.ndarray:
        cells = logx[np.flatnonzero(rows)]
        cells = (cells.toarray() if sp.issparse(cells) else np.asarray(cells)).astype(np.float64)  # (n, G)
        return mean_exact_shift(cells, self.delta(atoms, context))
