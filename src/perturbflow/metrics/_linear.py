"""The linear baseline of Ahlmann-Eltze, Huber & Anders (Nat. Methods 2025).

"Deep-learning-based gene perturbation effect prediction does not yet outperform simple
linear baselines" fits ``Y ≈ G W Pᵀ + b`` where ``Y`` (genes × training conditions) is the
pseudobulk expression, ``b`` its row means, ``G`` (genes × K) the gene embedding given by the
top-K principal components of ``Y`` (genes as observations), ``P`` (conditions × K) the
perturbation embedding (for a genetic perturbation, the row of ``G`` of the perturbed gene)
and ``W`` (K × K) the ridge solution

``W = (GᵀG + λI)⁻¹ Gᵀ (Y - b) P (PᵀP + λI)⁻¹``

with the paper's defaults ``K = 10``, ``λ = 0.1``.

Choices made here:

* ``Y`` holds effects (``mean(p, c) - ctrl(c)``) rather than expression, and ``b`` is the mean
  effect of the context's training conditions (the mean over all conditions for a context
  without any). Within one context this is exactly the paper's model, since the control mean
  is a constant column shift; across contexts it removes each context's baseline.
* A combination's embedding is the sum of its atoms' embeddings.
* A perturbation with an atom that is not a measured gene has no embedding; it is predicted
  by the ``train_mean`` effect, and training conditions of that kind do not enter ``W``.
"""

from __future__ import annotations

import logging

import numpy as np

from perturbflow.metrics._baselines import Baseline, register_baseline

logger = logging.getLogger(__name__)


@register_baseline("linear")
class LinearBaseline(Baseline):
    """Ridge regression on PCA gene embeddings (Ahlmann-Eltze et al. 2025).

    Parameters
    ----------
    n_components
        Dimension K of the gene embedding.
    ridge
        Ridge penalty λ, applied on both sides of ``W``.
    """

    def __init__(self, n_components: int = 10, ridge: float = 0.1) -> None:
        super().__init__()
        self.n_components = n_components
        self.ridge = ridge

    def _after_fit(self) -> None:
        conditions = list(self.effects)
        Y = np.stack([self.effects[k] for k in conditions], axis=1)  # (G, M)
        contexts = sorted({c for _, c in conditions})
        self.offset = {
            c: Y[:, [j for j, k in enumerate(conditions) if k[1] == c]].mean(axis=1)
            for c in contexts
        }
        self.global_offset = Y.mean(axis=1)
        Yc = Y - np.stack([self.offset[c] for _, c in conditions], axis=1)  # (G, M)

        # gene embedding: PCA scores of the genes (prcomp on the genes x conditions matrix)
        centred = Yc - Yc.mean(axis=0, keepdims=True)
        U, S, _ = np.linalg.svd(centred, full_matrices=False)
        k = max(1, min(self.n_components, S.size))
        self.gene_embedding = U[:, :k] * S[:k]  # (G, K)
        self.gene_index = {g: i for i, g in enumerate(self.genes)}

        fit_cols = [j for j, (atoms, _) in enumerate(conditions) if self._embed(atoms) is not None]
        self.W: np.ndarray | None = None
        if not fit_cols:
            logger.warning("linear baseline: no training perturbation targets a measured gene")
            return
        P = np.stack([self._embed(conditions[j][0]) for j in fit_cols])  # (M', K)
        G = self.gene_embedding
        eye = self.ridge * np.eye(k)
        left = np.linalg.solve(G.T @ G + eye, G.T @ Yc[:, fit_cols])  # (K, M')
        self.W = np.linalg.solve(P.T @ P + eye, (left @ P).T).T  # (K, K)

    def _embed(self, atoms: frozenset[str]) -> np.ndarray | None:
        """Sum of the embeddings of the perturbed genes; ``None`` if one is not measured."""
        if not atoms or any(a not in self.gene_index for a in atoms):
            return None
        return self.gene_embedding[[self.gene_index[a] for a in atoms]].sum(axis=0)

    def delta(self, atoms: frozenset[str], context: str) -> np.ndarray:
        if not atoms:
            return np.zeros(len(self.genes))
        emb = self._embed(atoms)
        if emb is None or self.W is None:
            return self.train_effect
        offset = self.offset.get(context, self.global_offset)
        return offset + self.gene_embedding @ (self.W @ emb)
