"""The lung-attention score's mean interval: scipy's BCa bootstrap, patients resampled where named."""

from __future__ import annotations

import numpy as np
from scipy.stats import bootstrap

from cxrlab.explain.score import mean_ci, summarise


def test_mean_ci_is_scipys_bca_interval_of_the_mean():
    shares = np.random.default_rng(3).beta(5, 2, size=3000)
    mean, ci = mean_ci(shares.tolist(), n_boot=500, seed=0)
    ref = bootstrap((shares,), np.mean, n_resamples=500, method="BCa", rng=np.random.default_rng(1))
    assert mean == shares.mean() and ci[0] < mean < ci[1]
    # an outside oracle with its own draws: the same interval within 0.002 (the mean's SE is 0.003)
    low, high = ref.confidence_interval
    assert abs(ci[0] - low) < 0.002 and abs(ci[1] - high) < 0.002
    assert np.isnan(mean_ci([], 500)[0]) and mean_ci(shares.tolist(), 0)[1] is None  # no resamples: none


def test_mean_ci_resamples_patients_never_splitting_one():
    rng = np.random.default_rng(5)
    per_patient = rng.beta(5, 2, size=40)
    shares = np.repeat(per_patient, 5)  # five heatmaps per patient, each patient's alike
    groups = [f"p{i}" for i in range(40) for _ in range(5)]
    _, by_image = mean_ci(shares.tolist(), 1000, seed=0)
    _, by_patient = mean_ci(shares.tolist(), 1000, seed=0, groups=groups)
    # 40 patients, not 200 independent images: the honest interval is about sqrt(5) times wider
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert 1.8 < width(by_patient) / width(by_image) < 2.8
    assert mean_ci(shares[:5].tolist(), 1000, groups=groups[:5])[1] is None  # one patient: not estimable
    rows = [
        {"class": "a", "lung_share": s, "lung_area": 0.3, "patient": g}
        for s, g in zip(shares, groups, strict=True)
    ]
    assert summarise(rows, "class", n_boot=1000)["a"]["ci95"] == [round(c, 4) for c in by_patient]
