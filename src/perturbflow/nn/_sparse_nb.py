"""scvi-tools' SCVI with its negative-binomial log-likelihood evaluated where the counts are.

scvi-tools' ``log_nb_positive`` computes, for every entry of a minibatch (cells x genes),

``theta (log theta - log(theta + mu)) + x (log mu - log(theta + mu))
+ lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)``.

The three ``lgamma`` terms cancel exactly where ``x = 0`` (``lgamma(theta) - lgamma(theta)
- lgamma(1) = 0``), and single-cell counts are mostly zeros (Kang's PBMCs: 4.6% of the
entries are counts). On the CPU the ``lgamma`` calls and their ``digamma`` gradients were
a third of a VAE step (benchmarks/RESULTS.md, "Session 22"), so here they are evaluated at
the nonzero entries only. The value and the gradients are those of scvi-tools' function up
to float rounding (``tests/test_sparse_nb.py`` checks both); on an accelerator scvi-tools'
dense function is kept, where a gather costs more than it saves.

The model classes below are scvi-tools' ``SCVI`` and ``LinearSCVI`` with that likelihood
in their module; everything else (encoder, decoder, training plan, saving) is theirs, and
the saved parameters are the same, so models saved by either class load in the other
(``allowed_classes_names_list``).
"""

from __future__ import annotations

import torch
from scvi.distributions import NegativeBinomial
from scvi.model import SCVI, LinearSCVI
from scvi.module import LDVAE, VAE


def nb_log_prob_where_counted(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor,
                              eps: float = 1e-8) -> torch.Tensor:
    """scvi-tools' ``log_nb_positive(x, mu, theta)``, its ``lgamma`` terms taken only where
    ``x > 0`` (they sum to 0 where ``x = 0``). Same shapes as ``x``."""
    log_theta_mu = torch.log(theta + mu + eps)
    out = theta * (torch.log(theta + eps) - log_theta_mu) + x * (torch.log(mu + eps) - log_theta_mu)
    where = (x > 0).nonzero(as_tuple=True)
    x_n, theta_n = x[where], theta[where]
    return out.index_put(where, torch.lgamma(x_n + theta_n) - torch.lgamma(theta_n) - torch.lgamma(x_n + 1),
                         accumulate=True)


class CountedNegativeBinomial(NegativeBinomial):
    """scvi-tools' :class:`~scvi.distributions.NegativeBinomial` whose ``log_prob`` on the
    CPU is :func:`nb_log_prob_where_counted`."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if value.device.type != "cpu" or self._validate_args:
            return super().log_prob(value)
        return nb_log_prob_where_counted(value, self.mu, self.theta, self._eps)


class _CountedLikelihood:
    """A module mixin: the generative step's negative binomial becomes
    :class:`CountedNegativeBinomial` (ZINB and the others are left as they are)."""

    def generative(self, *args, **kwargs):
        outputs = super().generative(*args, **kwargs)
        px = outputs["px"]
        if type(px) is NegativeBinomial:
            outputs["px"] = CountedNegativeBinomial(mu=px.mu, theta=px.theta, scale=px.scale)
        return outputs


class CountedVAE(_CountedLikelihood, VAE):
    """scvi-tools' ``VAE`` with :class:`CountedNegativeBinomial`."""


class CountedLDVAE(_CountedLikelihood, LDVAE):
    """scvi-tools' ``LDVAE`` (linear decoder) with :class:`CountedNegativeBinomial`."""


class CountedSCVI(SCVI):
    """scvi-tools' :class:`~scvi.model.SCVI` with :class:`CountedVAE` as its module."""

    _module_cls = CountedVAE


class CountedLinearSCVI(LinearSCVI):
    """scvi-tools' :class:`~scvi.model.LinearSCVI` with :class:`CountedLDVAE` as its module."""

    _module_cls = CountedLDVAE
