"""The baseline prior the flow starts from: additive, mean shift, context mean, leave-group-out."""

from __future__ import annotations

import numpy as np

from perturbflow.models._prior import BaselinePrior

A, B, C = frozenset(["A"]), frozenset(["B"]), frozenset(["C"])
AB = A | B


def prior() -> BaselinePrior:
    return BaselinePrior(
        {
            (A, "k562"): np.array([1.0, 0.0]),
            (B, "k562"): np.array([0.0, 2.0]),
            (AB, "k562"): np.array([5.0, 5.0]),
            (A, "hela"): np.array([3.0, 0.0]),
            (C, "hela"): np.array([0.0, -1.0]),
        }
    )


def test_combination_is_additive_and_leaves_itself_out():
    assert np.allclose(prior().prior(AB, "k562"), [1.0, 2.0])  # not its own observed [5, 5]


def test_new_context_gets_the_mean_shift():
    assert np.allclose(prior().prior(B, "hela"), [0.0, 2.0])
    assert np.allclose(prior().prior(A, "k562"), [3.0, 0.0])  # A seen in hela only, once left out


def test_unseen_single_gets_the_context_mean():
    p = prior()
    assert np.allclose(p.prior(frozenset(["D"]), "k562"), np.mean([[1, 0], [0, 2], [5, 5]], axis=0))
    assert np.allclose(p.prior(C, "k562"), [0.0, -1.0])  # seen in hela: the mean shift


def test_combination_mixes_where_its_atoms_were_seen():
    p = prior()
    assert np.allclose(p.prior(A | C, "k562"), [1.0, -1.0])  # A here, C from hela
    assert np.allclose(p.prior(AB, "hela"), [5.0, 5.0])  # the combination itself, seen in k562


def test_save_load(tmp_path):
    p = prior()
    p.save(tmp_path / "shifts.npz")
    q = BaselinePrior.load(tmp_path / "shifts.npz")
    assert q.shifts.keys() == p.shifts.keys()
    assert all(np.allclose(q.shifts[k], p.shifts[k]) for k in p.shifts)


def weighted_prior() -> BaselinePrior:
    p = prior()
    return BaselinePrior(p.shifts, carry_weights={(A, "k562"): 0.5, (C, "hela"): 0.0, (A, "hela"): 0.25})


def test_carry_weights_shrink_what_a_group_lends_elsewhere():
    p = weighted_prior()
    assert np.allclose(p.prior(A, "k562"), [0.75, 0.0])  # A from hela, a quarter of it
    assert np.allclose(p.prior(C, "k562"), [0.0, 0.0])  # C's shift is all noise: nothing lent
    assert np.allclose(p.prior(A | C, "k562"), [1.0, 0.0])  # A measured here keeps its whole shift


def test_combination_of_singles_measured_here_keeps_their_whole_shifts():
    assert np.allclose(weighted_prior().prior(AB, "k562"), [1.0, 2.0])


def test_save_load_keeps_the_carry_weights(tmp_path):
    p = weighted_prior()
    p.save(tmp_path / "shifts.npz")
    q = BaselinePrior.load(tmp_path / "shifts.npz")
    assert q.carry_weights == p.carry_weights
    assert np.allclose(q.prior(A, "k562"), [0.75, 0.0])
    p = prior()  # saved without weights, loaded without them
    p.save(tmp_path / "plain.npz")
    assert BaselinePrior.load(tmp_path / "plain.npz").carry_weights is None
