"""A seeded synthetic Perturb-seq dataset with known sparse effects."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData


def synthetic(
    n_genes: int = 200,
    n_atoms: int = 8,
    n_combos: int = 10,
    n_contexts: int = 2,
    n_cells_per_group: int = 80,
    n_control_cells: int = 300,
    n_effect_genes: int = 12,
    effect_size: float = 1.2,
    interaction_fraction: float = 0.3,
    n_heldout_combos: int = 3,
    library_size: float = 3000.0,
    theta: float = 8.0,
    seed: int = 0,
) -> AnnData:
    """Simulate a Perturb-seq experiment with single and two-gene perturbations.

    Each context (cell type) has its own baseline expression and a low-rank cell-state
    variation. Each atom (a perturbed gene ``G0``, ``G1``, ...) shifts the log-expression of
    ``n_effect_genes`` genes; the shift is scaled per context. A combination adds the shifts
    of its atoms, and a fraction of combinations also carries an interaction term on genes of
    its own. Counts are negative binomial around ``library_size``.

    Parameters
    ----------
    n_genes
        Number of genes.
    n_atoms
        Number of single perturbations (each also appears alone).
    n_combos
        Number of two-atom combinations.
    n_contexts
        Number of cell types.
    n_cells_per_group
        Cells per (perturbation, context).
    n_control_cells
        Control cells per context.
    n_effect_genes
        Genes moved by each atom.
    effect_size
        Typical absolute log-fold change of an affected gene.
    interaction_fraction
        Fraction of combinations with a non-additive term.
    n_heldout_combos
        Combinations marked ``test`` in ``obs['split']`` (their singles stay in training).
    library_size
        Mean total count per cell.
    theta
        Negative-binomial inverse dispersion.
    seed
        Random seed.

    Returns
    -------
    AnnData with integer counts in ``X`` (sparse), ``obs['perturbation']`` (``control``,
    ``G0``, ``G0+G3``, ...), ``obs['cell_type']``, ``obs['split']``, and the truth in
    ``uns['synthetic']`` (``interacting_combos``, ``heldout_combos``, parameters).
    """
    rng = np.random.default_rng(seed)
    atoms = [f"G{i}" for i in range(n_atoms)]
    genes = [f"gene{i}" for i in range(n_genes)]
    all_pairs = list(itertools.combinations(range(n_atoms), 2))
    pair_idx = rng.choice(len(all_pairs), size=min(n_combos, len(all_pairs)), replace=False)
    combos = [all_pairs[i] for i in sorted(pair_idx)]
    n_interacting = round(interaction_fraction * len(combos))
    interacting = set(rng.choice(len(combos), size=n_interacting, replace=False).tolist())

    def sparse_effect() -> np.ndarray:
        eff = np.zeros(n_genes)
        idx = rng.choice(n_genes, size=n_effect_genes, replace=False)
        eff[idx] = rng.choice([-1.0, 1.0], size=n_effect_genes) * effect_size * rng.uniform(
            0.5, 1.5, size=n_effect_genes
        )
        return eff

    atom_effects = np.stack([sparse_effect() for _ in atoms])  # (A, G)
    combo_effects = np.zeros((len(combos), n_genes))
    for c in interacting:
        combo_effects[c] = sparse_effect()
    base = rng.normal(0.0, 1.0, size=(n_contexts, n_genes))
    context_scale = rng.uniform(0.6, 1.4, size=(n_contexts, n_atoms))
    loadings = rng.normal(0.0, 0.35, size=(n_contexts, 3, n_genes))

    groups: list[tuple[str, int, np.ndarray]] = []
    for k in range(n_contexts):
        groups.append(("control", k, np.zeros(n_genes)))
        for a in range(n_atoms):
            groups.append((atoms[a], k, context_scale[k, a] * atom_effects[a]))
        for c, (a, b) in enumerate(combos):
            eff = (
                context_scale[k, a] * atom_effects[a]
                + context_scale[k, b] * atom_effects[b]
                + combo_effects[c]
            )
            groups.append((f"{atoms[a]}+{atoms[b]}", k, eff))

    blocks, labels, contexts = [], [], []
    for label, k, eff in groups:
        n = n_control_cells if label == "control" else n_cells_per_group
        state = rng.normal(size=(n, 3)) @ loadings[k]  # (n, G)
        logits = base[k] + eff + state
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        lib = rng.lognormal(np.log(library_size), 0.3, size=(n, 1))
        mu = lib * p
        counts = rng.poisson(rng.gamma(theta, mu / theta))
        blocks.append(sp.csr_matrix(counts.astype(np.float32)))
        labels += [label] * n
        contexts += [f"type{k}"] * n

    combo_labels = [f"{atoms[a]}+{atoms[b]}" for a, b in combos]
    heldout = combo_labels[: min(n_heldout_combos, len(combo_labels))]
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(labels),
            "cell_type": pd.Categorical(contexts),
        }
    )
    obs["split"] = np.where(obs["perturbation"].isin(heldout), "test", "train")
    obs.index = [f"cell{i}" for i in range(len(obs))]
    adata = AnnData(X=sp.vstack(blocks).tocsr(), obs=obs, var=pd.DataFrame(index=genes))
    adata.uns["synthetic"] = {
        "interacting_combos": [combo_labels[c] for c in sorted(interacting)],
        "heldout_combos": heldout,
        "seed": seed,
        "n_genes": n_genes,
        "n_atoms": n_atoms,
        "n_contexts": n_contexts,
    }
    return adata
