"""The VAE's negative binomial, its ``lgamma`` terms taken where the counts are: scvi-tools'
likelihood to float rounding, in value and gradients, and models saved by either class load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scvi.distributions._negative_binomial import log_nb_positive

from perturbflow.nn._sparse_nb import CountedNegativeBinomial, CountedVAE, nb_log_prob_where_counted


def _inputs(seed: int = 0, n: int = 64, genes: int = 300):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.rand(n, genes, generator=gen) * 3
    x = torch.poisson(mu, generator=gen) * (torch.rand(n, genes, generator=gen) < 0.3)  # mostly zeros
    logits = torch.randn(n, genes, generator=gen, requires_grad=True)
    log_theta = torch.randn(genes, generator=gen, requires_grad=True)
    return x, logits, log_theta


@pytest.mark.parametrize("seed", [0, 1])
def test_value_and_gradients_are_scvi_tools_negative_binomial(seed):
    x, logits, log_theta = _inputs(seed)
    results = []
    for log_prob in (log_nb_positive, nb_log_prob_where_counted):
        logits.grad = log_theta.grad = None
        mu = torch.softmax(logits, -1) * (x.sum(-1, keepdim=True) + 1)
        theta = log_theta.exp().expand_as(mu)  # gene-wise dispersion, as SCVI's
        value = log_prob(x, mu, theta).sum(-1)
        value.sum().backward()
        results.append((value.detach(), logits.grad.clone(), log_theta.grad.clone()))
    (v0, g0, t0), (v1, g1, t1) = results
    assert (x == 0).float().mean() > 0.6
    assert torch.allclose(v1, v0, rtol=1e-5, atol=1e-3)
    assert torch.allclose(g1, g0, rtol=1e-5, atol=1e-6)
    assert torch.allclose(t1, t0, rtol=1e-4, atol=1e-5)


def test_the_distribution_is_scvi_tools_with_the_same_log_prob():
    x, logits, log_theta = _inputs(2)
    mu = torch.softmax(logits, -1).detach() * 50
    px = CountedNegativeBinomial(mu=mu, theta=log_theta.detach().exp())
    from scvi.distributions import NegativeBinomial

    assert isinstance(px, NegativeBinomial)
    reference = NegativeBinomial(mu=mu, theta=log_theta.detach().exp()).log_prob(x)
    assert torch.allclose(px.log_prob(x), reference, rtol=1e-5, atol=1e-4)


def test_a_fitted_vae_uses_it_and_a_model_saved_by_scvi_tools_own_class_loads(trained_model, tmp_path):
    import scvi

    from perturbflow.nn import CountVAE

    vae = trained_model.vae
    assert isinstance(vae.module, CountedVAE)
    assert isinstance(vae.scvi_model, scvi.model.SCVI)
    px = vae.distribution(torch.zeros(3, vae.module.n_latent), torch.full((3,), 500.0))
    assert isinstance(px, CountedNegativeBinomial)

    # the same parameters in scvi-tools' own SCVI, saved as a model of before session 25 was
    adata = vae.scvi_model.adata.copy()
    scvi.model.SCVI.setup_anndata(adata)
    plain = scvi.model.SCVI(adata, n_hidden=vae.module.n_hidden, n_latent=vae.module.n_latent,
                            n_layers=vae.module.n_layers, gene_likelihood="nb", dispersion="gene")
    plain.module.load_state_dict(vae.module.state_dict())
    plain.save(str(tmp_path / "plain"), save_anndata=False)
    loaded = CountVAE.load(tmp_path / "plain", list(adata.var_names))
    assert isinstance(loaded.module, CountedVAE)
    x = torch.as_tensor(np.asarray(adata.X[:20].toarray()), dtype=torch.float32)
    assert torch.allclose(loaded.encode_mean(x), vae.encode_mean(x), atol=1e-6)
