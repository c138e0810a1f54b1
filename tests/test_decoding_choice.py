"""The choice between keeping a group's mean exact and clipping, made on measured contexts."""

from __future__ import annotations

import numpy as np
import pytest

from perturbflow.data import Group
from perturbflow.train import DECODINGS, choose_decoding, decoding_scores, fitted_share
from perturbflow.train._decoding_choice import LIFT_FIT, LIFT_SQUARED


def test_choose_decoding_averages_the_measured_contexts():
    scores = {
        "A": {"exact": 1.0, "clipped": 2.0},
        "B": {"exact": 3.0, "clipped": 1.0},
        "C": {"exact": 0.5, "clipped": 0.6},
        "D": {"exact": 2.5, "clipped": 1.5},
    }
    assert choose_decoding(scores, ["A", "C"]) == "exact"  # 0.75 against 1.3
    assert choose_decoding(scores, ["B"]) == "clipped"
    assert choose_decoding(scores, ["A", "B", "C"]) == "clipped"  # 1.5 against 1.2: B's loss outweighs
    assert choose_decoding(scores, ["A", "D"]) == "exact"  # a tie: 1.75 each
    assert choose_decoding(scores, []) == "exact"  # nothing measured: the default
    assert choose_decoding(scores, ["E"]) == "exact"  # never scored


def test_decoding_scores_prefer_the_decoding_that_reproduces_the_real_cells():
    """Two contexts; in each the perturbation moves every cell by +1.5 in every gene. The
    "exact" decoding predicts that move, "clipped" none: its energy distance is the larger."""
    rng = np.random.default_rng(0)
    n, genes = 100, 12
    data = rng.normal(size=(4 * n, genes))
    data[n : 2 * n] += 1.5  # context 0: controls 0..n, perturbed n..2n
    data[3 * n :] += 1.5  # context 1: controls 2n..3n, perturbed 3n..4n
    groups = [
        Group("P", 0, np.array([1]), np.arange(n, 2 * n), np.arange(n), np.zeros(2)),
        Group("P", 1, np.array([1]), np.arange(3 * n, 4 * n), np.arange(2 * n, 3 * n), np.zeros(2)),
    ]
    calls = []

    def predicted(group, rows, exact):
        calls.append((group.context, len(rows), exact))
        return data[rows] + (1.5 if exact else 0.0)

    scores = decoding_scores(groups, ["ctx0", "ctx1"], lambda rows: data[rows], predicted, seed=0)
    assert set(scores) == {"ctx0", "ctx1"}
    for s in scores.values():
        assert set(s) == {*DECODINGS, LIFT_FIT, LIFT_SQUARED}
        assert s["exact"] < 0.1 * s["clipped"]
    assert sorted(calls) == [(0, n, False), (0, n, True), (1, n, False), (1, n, True)]
    # the real move is all of exact's: share 1 (the real means' noise, ~0.1 per gene, is small)
    assert fitted_share(scores, ["ctx0", "ctx1"]) == pytest.approx(1.0, abs=0.1)

    def overshooting(group, rows, exact):  # "exact" moves twice as far as the real cells
        return data[rows] + (3.0 if exact else 0.0)

    scores = decoding_scores(groups, ["ctx0", "ctx1"], lambda rows: data[rows], overshooting, seed=0)
    assert fitted_share(scores, ["ctx0", "ctx1"]) == pytest.approx(0.5, abs=0.05)
    assert fitted_share(scores, ["ctx0"]) == pytest.approx(0.5, abs=0.05)


def test_fitted_share_is_a_clipped_least_squares_coefficient():
    """sum lift_fit / sum lift_squared over the contexts asked for, in [0, 1]; 1 where
    nothing was scored or nothing was clipped."""
    scores = {
        "A": {"exact": 1.0, "clipped": 2.0, LIFT_FIT: 3.0, LIFT_SQUARED: 4.0},
        "B": {"exact": 1.0, "clipped": 2.0, LIFT_FIT: -1.0, LIFT_SQUARED: 4.0},
        "C": {"exact": 1.0, "clipped": 2.0, LIFT_FIT: 9.0, LIFT_SQUARED: 1.0},
        "D": {"exact": 1.0, "clipped": 1.0, LIFT_FIT: 0.0, LIFT_SQUARED: 0.0},
        "old": {"exact": 1.0, "clipped": 2.0},  # recorded before the sums were
    }
    assert fitted_share(scores, ["A"]) == pytest.approx(0.75)
    assert fitted_share(scores, ["A", "B"]) == pytest.approx(0.25)
    assert fitted_share(scores, ["B"]) == 0.0
    assert fitted_share(scores, ["C"]) == 1.0
    assert fitted_share(scores, ["D"]) == 1.0
    assert fitted_share(scores, ["old", "E"]) == 1.0
    assert fitted_share(scores, ["A", "old"]) == pytest.approx(0.75)
