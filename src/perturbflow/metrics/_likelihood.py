"""Held-out negative-binomial log-likelihood of real cells under a predicted expression profile.

A model with a count likelihood (perturbflow's scvi-tools decoder) records its gene-wise NB
dispersion ``theta`` in ``adata_pred.var['nb_dispersion']``. For a held-out group, the
predicted profile ``p`` is the mean over predicted cells of their normalised expression
``x / sum(x)``; each real cell of the group with total count ``l`` is scored under
``NB(mean = l * p, inverse dispersion = theta)``, gene by gene, with scvi-tools'
:class:`~scvi.distributions.NegativeBinomial`. The metric is the mean over real cells of the
summed log-likelihood (nats per cell; higher is better). Predictors without a likelihood
(the baselines) have none, and their column is NaN.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

DISPERSION_KEY = "nb_dispersion"
PROFILE_FLOOR = 1e-8  # a gene the prediction never expresses still gets a tiny mean


def predicted_profile(pred_counts: np.ndarray | sp.spmatrix) -> np.ndarray:
    """Mean normalised expression ``mean_k x_k / sum(x_k)`` of predicted cells, shape ``(G,)``."""
    totals = np.asarray(pred_counts.sum(axis=1), dtype=np.float64).ravel()
    scale = 1.0 / np.where(totals > 0, totals, 1.0)
    if sp.issparse(pred_counts):
        profile = np.asarray(sp.csr_matrix(pred_counts).multiply(scale[:, None]).mean(axis=0)).ravel()
    else:
        profile = (np.asarray(pred_counts, dtype=np.float64) * scale[:, None]).mean(axis=0)
    profile = np.maximum(profile, PROFILE_FLOOR)
    return profile / profile.sum()


def nb_log_likelihood(real_counts: np.ndarray | sp.spmatrix, profile: np.ndarray, theta: np.ndarray) -> float:
    """Mean over real cells of ``sum_g log NB(x_g | l * profile_g, theta_g)``.

    Parameters
    ----------
    real_counts
        Counts of the real held-out cells, cells by genes.
    profile
        Predicted normalised expression, summing to one, shape ``(G,)``.
    theta
        NB inverse dispersion per gene, shape ``(G,)``.
    """
    from scvi.distributions import NegativeBinomial

    x = torch.as_tensor(real_counts.toarray() if sp.issparse(real_counts) else np.asarray(real_counts),
                        dtype=torch.float64)
    library = x.sum(-1, keepdim=True)  # (n, 1)
    mu = library * torch.as_tensor(profile, dtype=torch.float64)  # (n, G)
    nb = NegativeBinomial(mu=mu, theta=torch.as_tensor(theta, dtype=torch.float64).expand_as(mu),
                          validate_args=False)
    return float(nb.log_prob(x).sum(-1).mean())
