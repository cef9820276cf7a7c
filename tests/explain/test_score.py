"""The lung-attention score's mean interval: drawn in blocks (a large gallery), the same numbers."""

from __future__ import annotations

import numpy as np

import cxrlab.stats
from cxrlab.explain.score import mean_ci


def test_mean_ci_in_blocks_is_the_one_draw_interval(monkeypatch):
    shares = np.random.default_rng(3).beta(5, 2, size=3000).tolist()
    rng = np.random.default_rng(0)
    v = np.asarray(shares)
    expected = np.percentile(v[rng.integers(0, len(v), size=(500, len(v)))].mean(axis=1), [2.5, 97.5])
    mean, ci = mean_ci(shares, n_boot=500, seed=0)
    assert mean == v.mean() and np.allclose(ci, expected, rtol=0, atol=1e-12)
    monkeypatch.setattr(cxrlab.stats, "BOOTSTRAP_CELLS", 3000 * 7)  # blocks of 7 replicates, the last of 3
    assert mean_ci(shares, n_boot=500, seed=0) == (mean, ci)
    assert ci[0] < mean < ci[1]
    assert np.isnan(mean_ci([], 500)[0]) and all(np.isnan(mean_ci(shares, 0)[1]))
