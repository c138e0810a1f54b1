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


def test_carried_scale_applies_to_what_comes_from_other_contexts():
    p = prior()
    p.carried_scale = 0.5
    assert np.allclose(p.prior(B, "hela"), [0.0, 1.0])  # B from k562, half of it
    assert np.allclose(p.prior(A | C, "k562"), [1.0, -0.5])  # A measured here whole, C from hela halved
    assert np.allclose(p.prior(AB, "k562"), [1.0, 2.0])  # singles measured here: whole


def test_save_load_keeps_the_carried_scale(tmp_path):
    p = prior()
    p.carried_scale = 0.25
    p.save(tmp_path / "shifts.npz")
    q = BaselinePrior.load(tmp_path / "shifts.npz")
    assert q.carried_scale == 0.25
    assert np.allclose(q.prior(B, "hela"), [0.0, 0.5])
