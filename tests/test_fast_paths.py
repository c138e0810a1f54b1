"""Fast paths of prediction against the plain computations they replace."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from perturbflow.data import log_normalize_rows, log_normalized_mean


def test_log_normalized_mean_is_the_mean_of_log_normalize_rows():
    rng = np.random.default_rng(0)
    dense = rng.poisson(rng.gamma(0.5, 2.0, (40, 30))).astype(np.float32)
    dense[3] = 0  # an empty row stays zero
    expected = np.asarray(log_normalize_rows(dense), dtype=np.float64).mean(0)
    assert np.allclose(log_normalized_mean(sp.csr_matrix(dense)), expected, atol=1e-6)
    assert np.allclose(log_normalized_mean(sp.csc_matrix(dense)), expected, atol=1e-6)
    assert np.allclose(log_normalized_mean(dense), expected, atol=1e-6)
