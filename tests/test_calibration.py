"""Calibration of the flow's correction: which groups are held out and which scale is kept."""

import numpy as np

from perturbflow.data import Group
from perturbflow.train import (
    CORRECTION_SCALES,
    calibration_split,
    choose_correction_scale,
)


def _group(label: str, atoms: list[int], context: int = 0) -> Group:
    return Group(label, context, np.array(atoms), np.arange(3), np.arange(3), np.zeros(2))


def test_calibration_holds_out_only_groups_whose_atoms_stay_fitted():
    # atom 9 appears once: its group can never be held out; atoms 1..4 appear in two contexts
    groups = [_group(f"g{a}c{c}", [a], c) for a in range(1, 5) for c in range(2)]
    groups += [_group("solo", [9]), _group("pair", [1, 2])]
    for seed in range(20):
        held = calibration_split(groups, seed)
        assert len(held) == len(groups) // 5
        assert all(g.label != "solo" for g in held)
        fitted = [g for g in groups if all(g is not h for h in held)]
        seen = {int(a) for g in fitted for a in g.atom_ids}
        assert all(int(a) in seen for g in held for a in g.atom_ids)


def test_calibration_needs_five_groups_and_a_group_that_qualifies():
    assert calibration_split([_group(f"g{i}", [i]) for i in range(1, 4)], 0) == []
    assert calibration_split([_group(f"g{i}", [i]) for i in range(1, 9)], 0) == []  # every atom unique


def _shifted_groups(rng, n_groups: int = 4, shift: float = 2.0):
    """Latents where each group's perturbed cells are its controls moved by ``shift`` along axis 0."""
    z, groups = [], []
    for i in range(n_groups):
        ctrl = rng.normal(size=(80, 3))
        pert = rng.normal(size=(80, 3)) + np.array([shift, 0.0, 0.0])
        src = np.arange(len(z) * 80, len(z) * 80 + 80)
        tgt = src + 80
        z += [ctrl, pert]
        groups.append(Group(f"g{i}", 0, np.array([i + 1]), tgt, src, np.zeros(3)))
    return np.concatenate(z).astype(np.float32), groups


def test_a_flow_that_finds_the_shift_is_kept_and_one_that_does_not_is_dropped():
    rng = np.random.default_rng(1)
    z_all, groups = _shifted_groups(rng)

    def exact(z0, atom_ids, context, prior):
        return z0 + np.array([2.0, 0.0, 0.0])

    def wrong(z0, atom_ids, context, prior):
        return z0 - np.array([2.0, 0.0, 0.0])

    assert choose_correction_scale(exact, groups, z_all, 0) == max(CORRECTION_SCALES)
    assert choose_correction_scale(wrong, groups, z_all, 0) == 0.0
