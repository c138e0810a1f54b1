"""Transfer of effects between contexts: closed-form weights and the cross-validated choice."""

import numpy as np
import pytest

from perturbflow.models._prior import BaselinePrior
from perturbflow.models._transfer import ContextTransfer, pooled_effects

P, Q = frozenset(["P"]), frozenset(["Q"])


def _line_of_contexts(n: int = 6, genes: int = 30, seed: int = 0):
    """Contexts on a line in control space; the response of P changes smoothly along it."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=genes)
    means, shifts = {}, {}
    for i in range(n):
        pos = i / (n - 1)
        means[f"c{i}"] = pos * direction
        shifts[(P, f"c{i}")] = np.sin(3 * pos) * direction + 0.01 * rng.normal(size=genes)
    return means, shifts


def test_weights_match_the_kernel_formula():
    means = {"a": np.zeros(2), "b": np.ones(2), "c": 2 * np.ones(2)}
    t = ContextTransfer(means, bandwidth=0.5)
    d = np.array([1.0, 4.0])  # mean squared distances of b and c from a
    expected = np.exp(-d / (0.5 * np.median(d)))
    assert np.allclose(t.weights("a", ["b", "c"]), expected / expected.sum())
    assert np.allclose(ContextTransfer(means).weights("a", ["b", "c"]), [0.5, 0.5])  # inf: equal


def test_plain_setting_is_the_mean_shift_of_other_contexts():
    shifts = {(P, "a"): np.array([1.0, 0.0]), (P, "b"): np.array([3.0, 2.0]), (Q, "c"): np.array([9.0, 9.0])}
    pooled = pooled_effects(shifts, {k: 1 for k in shifts})
    assert np.allclose(ContextTransfer().transfer(P, "c", shifts, pooled), [2.0, 1.0])
    assert ContextTransfer().transfer(frozenset(["R"]), "c", shifts, pooled) is None


def test_specificity_blends_towards_the_pooled_effect():
    shifts = {(P, "a"): np.array([2.0]), (Q, "a"): np.array([0.0]), (P, "b"): np.array([0.0])}
    sizes = {(P, "a"): 1, (Q, "a"): 3, (P, "b"): 1}
    pooled = pooled_effects({k: v for k, v in shifts.items() if k[1] != "b"}, sizes)
    assert np.allclose(pooled["a"], [0.5])  # cell-weighted: (2*1 + 0*3) / 4
    t = ContextTransfer(specificity=0.25)
    assert np.allclose(t.transfer(P, "b", shifts, pooled), [0.25 * 2.0 + 0.75 * 0.5])


def _screen(strong: float, noise_sd: float, genes: int = 200, seed: int = 0):
    """Two contexts; P has an effect of size ``strong`` in both, three weak others share a
    common response; every measured shift carries noise of standard deviation ``noise_sd``."""
    rng = np.random.default_rng(seed)
    common, own = rng.normal(size=genes), rng.normal(size=genes)
    shifts, noise = {}, {}
    for c in ("a", "b"):
        shifts[(P, c)] = 0.2 * common + strong * own + noise_sd * rng.normal(size=genes)
        for name in "QRS":
            shifts[(frozenset([name]), c)] = 0.2 * common + noise_sd * rng.normal(size=genes)
    noise = {k: noise_sd**2 for k in shifts}
    return shifts, noise, common, own


def _moved_and_plain(shifts, noise):
    """P carried to a new context with per-perturbation shrinkage, and P's plain mean shift."""
    moved = ContextTransfer(effects=shifts, noise=noise).transfer(P, "new", shifts, pooled_effects(shifts, {}))
    return moved, np.mean([shifts[(P, "a")], shifts[(P, "b")]], axis=0)


def test_shrinkage_keeps_a_strong_consistent_effect_whole():
    moved, plain = _moved_and_plain(*_screen(strong=1.0, noise_sd=0.1)[:2])
    assert np.allclose(moved, plain, atol=0.02 * np.abs(plain).max())


def test_shrinkage_pulls_a_noisy_effect_towards_the_pooled_one():
    shifts, noise, common, own = _screen(strong=0.05, noise_sd=0.5)
    moved, plain = _moved_and_plain(shifts, noise)
    t = ContextTransfer(effects=shifts, noise=noise)
    truth = 0.2 * common + 0.05 * own
    # the shrunk estimate is closer to the true effect than the perturbation's own noisy mean
    assert np.mean((moved - truth) ** 2) < 0.5 * np.mean((plain - truth) ** 2)
    a = t.shrinkage(P, ["a", "b"], np.array([0.5, 0.5]), ["a", "b"], np.array([0.5, 0.5]))
    assert 0.0 <= a < 0.5


def test_shrinkage_grows_with_the_signal_to_noise_ratio():
    factors = []
    for strong in (0.05, 0.2, 0.5, 2.0):
        shifts, noise, _, _ = _screen(strong=strong, noise_sd=0.3, seed=3)
        t = ContextTransfer(effects=shifts, noise=noise)
        factors.append(t.shrinkage(P, ["a", "b"], np.array([0.5, 0.5]), ["a", "b"], np.array([0.5, 0.5])))
    assert factors == sorted(factors) and factors[-1] > 0.95


def test_selection_prefers_similar_contexts_when_the_response_follows_them():
    means, shifts = _line_of_contexts()
    chosen, scores = ContextTransfer.select(shifts, {k: 10 for k in shifts}, means)
    assert np.isfinite(chosen.bandwidth)
    assert scores[chosen.bandwidth] < scores[np.inf]


def test_selection_keeps_the_plain_mean_shift_when_contexts_respond_alike():
    rng = np.random.default_rng(1)
    effect = rng.normal(size=30)
    means = {f"c{i}": rng.normal(size=30) for i in range(5)}
    shifts = {(P, c): effect for c in means}
    chosen, _ = ContextTransfer.select(shifts, {k: 10 for k in shifts}, means)
    assert np.isinf(chosen.bandwidth)


def test_one_context_keeps_the_plain_setting():
    chosen, scores = ContextTransfer.select({(P, "a"): np.ones(3)}, {(P, "a"): 5}, {"a": np.zeros(3)})
    assert scores == {} and np.isinf(chosen.bandwidth)


def test_prior_uses_the_transfer_and_survives_save_and_load(tmp_path):
    means, shifts = _line_of_contexts()
    transfer = ContextTransfer(means, bandwidth=0.1)
    prior = BaselinePrior(shifts, {k: 10 for k in shifts}, transfer)
    near = prior.prior(P, "c0")
    # c0 is predicted mostly from its neighbour c1, not from the average of all contexts
    assert np.linalg.norm(near - shifts[(P, "c1")]) < np.linalg.norm(near - np.mean([shifts[(P, f"c{i}")] for i in range(1, 6)], 0))
    # a new context is described by its own control mean
    new = prior.prior(P, "new", control_mean=means["c5"])
    assert np.linalg.norm(new - shifts[(P, "c5")]) < np.linalg.norm(new - shifts[(P, "c0")])
    prior.save(tmp_path / "p.npz")
    loaded = BaselinePrior.load(tmp_path / "p.npz")
    assert np.allclose(loaded.prior(P, "c0"), near)
    assert loaded.transfer.bandwidth == pytest.approx(0.1)


def test_bandwidth_is_chosen_near_each_context():
    # a and b lie near x, c near y; near x the plain weights predicted better, near y the narrow ones
    means = {"a": np.zeros(2), "b": np.array([0.1, 0.0]), "c": np.array([5.0, 5.0])}
    local = {np.inf: {"a": 1.0, "b": 1.0, "c": 10.0}, 0.1: {"a": 2.0, "b": 2.0, "c": 0.0}}
    t = ContextTransfer(means, bandwidth=0.1, local_errors=local)
    assert np.isinf(t.bandwidth_in("x", np.array([0.05, 0.0])))
    assert t.bandwidth_in("y", np.array([5.0, 5.1])) == 0.1
    assert t.bandwidth_in("x", np.array([0.05, 0.0])) != min(local, key=lambda h: np.mean(list(local[h].values())))
    assert ContextTransfer(means, bandwidth=0.25).bandwidth_in("x", np.zeros(2)) == 0.25  # no local errors


def test_errors_in_every_axis_are_the_squared_error_over_all_genes():
    means, shifts = _line_of_contexts()
    genes = len(means["c0"])
    axes = {c: np.eye(genes) for c in means}
    chosen, scores = ContextTransfer.select(shifts, {k: 10 for k in shifts}, means, axes=axes)
    assert list(chosen.local_errors) == list(scores)  # every bandwidth of the grid, in its order
    for h, errors in chosen.local_errors.items():
        assert set(errors) == set(means)
        assert np.mean(list(errors.values())) / genes == pytest.approx(scores[h])  # one group per context


def test_bandwidth_chosen_near_each_context_survives_save_and_load(tmp_path):
    means, shifts = _line_of_contexts()
    axes = {c: np.eye(len(means["c0"]))[:5] for c in means}
    chosen, _ = ContextTransfer.select(shifts, {k: 10 for k in shifts}, means, axes=axes)
    prior = BaselinePrior(shifts, {k: 10 for k in shifts}, chosen)
    new = prior.prior(P, "new", control_mean=means["c4"] + 0.01)
    prior.save(tmp_path / "p.npz")
    loaded = BaselinePrior.load(tmp_path / "p.npz")
    assert list(loaded.transfer.local_errors) == list(chosen.local_errors)
    for h, errors in chosen.local_errors.items():
        assert loaded.transfer.local_errors[h] == pytest.approx(errors)
    assert np.allclose(loaded.prior(P, "new", control_mean=means["c4"] + 0.01), new)


def test_the_noise_of_a_contexts_control_mean_does_not_shrink_an_effect():
    # every shift of a context is its group mean less the context's control mean: the control
    # mean's noise is in all of them alike and cancels against the context's pooled effect
    shifts, noise, _, _ = _screen(strong=0.3, noise_sd=0.3, seed=5)
    rng = np.random.default_rng(1)
    offset = {c: 2.0 * rng.normal(size=200) for c in ("a", "b")}
    shared_noise = {k: v - offset[k[1]] for k, v in shifts.items()}
    w = np.array([0.5, 0.5])
    plain = ContextTransfer(effects=shifts, noise=noise).shrinkage(P, ["a", "b"], w, ["a", "b"], w)
    noisy = ContextTransfer(effects=shared_noise, noise=noise).shrinkage(P, ["a", "b"], w, ["a", "b"], w)
    assert 0.2 < plain < 0.99 and noisy == pytest.approx(plain, abs=1e-9)


def _contexts_that_differ(mu: float, tau: float, sigma: float, k: int = 4, genes: int = 20000, seed: int = 0):
    """``k`` contexts; P's effect in each is ``pooled + mu * own + e(c)``, its own deviation
    ``e(c)`` of standard deviation ``tau`` per gene, measured with noise ``sigma``; three
    other perturbations make the pooled effect of every context exactly ``common``."""
    rng = np.random.default_rng(seed)
    common, own = rng.normal(size=genes), rng.normal(size=genes)
    shifts, noise = {}, {}
    for c in range(k):
        p = common + mu * own + tau * rng.normal(size=genes) + sigma * rng.normal(size=genes)
        shifts[(P, f"c{c}")] = p
        for name in "QRS":
            shifts[(frozenset([name]), f"c{c}")] = common - (p - common) / 3
        noise[(P, f"c{c}")] = sigma**2
    return shifts, noise


def test_a_new_contexts_own_deviation_does_not_shrink_an_effect():
    # the squared error of shared + a (specific - shared) as a prediction of a new context's
    # effect is (1 - a)^2 mu^2 + a^2 V + tau^2 (module docstring): least at mu^2 / (mu^2 + V),
    # V = sum w^2 (sigma^2 + tau^2); tau^2 alone is the same for every a
    mu, tau, sigma, k = 0.5, 0.4, 0.3, 4
    shifts, noise = _contexts_that_differ(mu, tau, sigma, k)
    contexts = [f"c{c}" for c in range(k)]
    w = np.full(k, 1.0 / k)
    a = ContextTransfer(effects=shifts, noise=noise).shrinkage(P, contexts, w, contexts, w)
    v = np.sum(w**2) * (sigma**2 + tau**2)
    assert a == pytest.approx(mu**2 / (mu**2 + v), abs=0.02)
    assert mu**2 / (mu**2 + v) - (mu**2 - tau**2) / (mu**2 + v) > 0.2  # tau^2 counted in V too (sessions 5-18)


def test_the_latent_prior_judges_a_perturbation_where_it_is_moved():
    # in genes, P's effect is thin over 200 genes under noise (shrunk to the pooled effect);
    # in the latent it stands out of its noise in one dimension and is kept
    shifts, noise, _, _ = _screen(strong=0.05, noise_sd=0.5)
    genes = ContextTransfer(bandwidth=0.25, effects=shifts, noise=noise)
    rng = np.random.default_rng(2)
    latent = {k: (np.eye(4)[0] * 3.0 if k[0] == P else np.zeros(4)) + 0.1 * rng.normal(size=4) for k in shifts}
    in_latent = genes.in_space(latent, {k: 0.01 for k in latent})
    w = np.array([0.5, 0.5])
    assert genes.shrinkage(P, ["a", "b"], w, ["a", "b"], w) < 0.5
    assert in_latent.shrinkage(P, ["a", "b"], w, ["a", "b"], w) > 0.95
    assert in_latent.bandwidth == genes.bandwidth and genes.effects is shifts  # the kernel kept, genes untouched


def test_a_trained_model_shrinks_its_latent_prior_in_the_latent(trained_model):
    n_latent = trained_model.config.n_latent
    assert {len(v) for v in trained_model.prior.transfer.effects.values()} == {n_latent}
    assert {len(v) for v in trained_model.gene_prior.transfer.effects.values()} == {len(trained_model.genes)}


def test_a_trained_models_residual_keeps_the_share_its_latent_prior_keeps(trained_model):
    # one judgement per perturbation: what the latent does not carry of an effect is carried
    # to another context with the share of the perturbation's own effect the latent move keeps
    latent, residual = trained_model.prior, trained_model.residual_prior
    carried = [(a, c) for a, c in latent.shifts if len(a) == 1 and latent.specificity(a, c) is not None]
    assert carried
    for atoms, context in carried:
        assert residual.specificity(atoms, context) == latent.specificity(atoms, context)
