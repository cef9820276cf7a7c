"""Multi-label metrics on the real nih-1000 label rows (no training): per-finding AUC is scikit-learn's,
NaN targets are left out, the patient bootstrap never splits a patient, undefined AUCs are notes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrlab.config import LabelsConfig
from cxrlab.data.index import discover
from cxrlab.evaluation.multilabel import choose_thresholds, multilabel_metrics, weighted_auc
from cxrlab.stats import bootstrap_intervals, youden_threshold
from tests.conftest import DATA

NIH = DATA / "nih-1000"


@pytest.fixture(scope="module")
def nih():
    """The nih-1000 index: targets (N, 14), patient groups and a real metadata score (patient age)."""
    if not (NIH / "labels.csv").is_file():
        pytest.skip("nih-1000 not available")
    index = discover(NIH / "images", labels=LabelsConfig(file=str(NIH / "labels.csv"), format="nih"))
    samples = index.samples
    targets = np.stack([s.targets for s in samples]).astype(np.float64)
    ages = np.array([float(a) for a in index.table.column("Patient Age", samples)])
    rng = np.random.default_rng(0)
    scores = np.stack([0.7 * ages / ages.max() + 0.3 * rng.random(len(ages)) for _ in index.findings], axis=1)
    return index, targets, [s.group for s in samples], scores


def test_per_finding_auc_and_ap_equal_sklearn(nih):
    index, targets, groups, scores = nih
    m = multilabel_metrics(targets, scores, index.findings, groups=groups, n_boot=20)
    for j, name in enumerate(index.findings):
        assert m["per_finding"][name]["auc"] == pytest.approx(roc_auc_score(targets[:, j], scores[:, j]))
        assert m["per_finding"][name]["average_precision"] == pytest.approx(
            average_precision_score(targets[:, j], scores[:, j])
        )
    assert m["macro_auc"] == pytest.approx(
        np.mean([roc_auc_score(targets[:, j], scores[:, j]) for j in range(targets.shape[1])])
    )
    assert m["micro_auc"] == pytest.approx(roc_auc_score(targets.ravel(), scores.ravel()))
    lo, hi = m["macro_auc_ci95"]
    assert lo <= m["macro_auc"] <= hi
    assert m["bootstrap_unit"].startswith("patient (")


def test_nan_targets_are_left_out(nih):
    index, targets, groups, scores = nih
    t = targets.copy()
    t[::3, 0] = np.nan  # a third of the first finding unknown (e.g. uncertain, policy ignore)
    m = multilabel_metrics(t, scores, index.findings, n_boot=0)
    known = ~np.isnan(t[:, 0])
    assert m["per_finding"][index.findings[0]]["n"] == int(known.sum())
    assert m["per_finding"][index.findings[0]]["auc"] == pytest.approx(
        roc_auc_score(t[known, 0], scores[known, 0])
    )
    assert m["micro_auc"] == pytest.approx(roc_auc_score(t[~np.isnan(t)], scores[~np.isnan(t)]))


def _resample_weights(groups: list[str], n_boot: int, seed: int) -> np.ndarray:
    """The ``(n_boot, n)`` image weights bootstrap_intervals hands its statistic (the resamples only: the
    first call is the test set itself, scipy's jackknife calls have one patient fewer)."""
    seen: list[np.ndarray] = []

    def statistic(w: np.ndarray) -> dict[str, np.ndarray]:
        seen.append(w.copy())
        return {"mean": w.mean(1)}

    bootstrap_intervals(statistic, len(groups), groups, n_boot, seed)
    n_patients = len(set(groups))
    rows = np.concatenate(seen[1:])
    resamples = np.isclose(_draws(rows, groups), n_patients) & ~(rows == 1).all(1)  # not the test set
    return rows[resamples][:n_boot]


def _draws(w: np.ndarray, groups: list[str]) -> np.ndarray:
    g = np.array(groups)
    first = {p: i for i, p in reversed(list(enumerate(g)))}
    return w[:, [first[p] for p in np.unique(g)]].sum(1)


def test_weighted_auc_equals_sklearn_with_ties_and_duplication(nih):
    _, targets, groups, scores = nih
    y, s = targets[:, 2] == 1, np.round(scores[:, 2], 1)  # coarse scores: many ties
    assert weighted_auc(s, y, np.ones((1, len(y))))[0] == pytest.approx(roc_auc_score(y, s))
    w = _resample_weights(groups, 3, seed=1)
    assert len(w) == 3
    for row in w:  # a weight of k is the image drawn k times
        idx = np.repeat(np.arange(len(y)), row.astype(int))
        assert weighted_auc(s, y, row[None, :])[0] == pytest.approx(roc_auc_score(y[idx], s[idx]))


def test_patient_bootstrap_never_splits_a_patient(nih):
    _, targets, groups, _ = nih
    w = _resample_weights(groups, 200, seed=0)
    g = np.array(groups)
    assert w.shape == (200, len(groups))
    for patient in np.unique(g):
        cols = w[:, g == patient]
        assert (cols == cols[:, :1]).all(), patient  # all images of a patient: the same weight, every time
    # as many patients drawn as there are patients
    assert (_draws(w, groups) == len(np.unique(g))).all()
    assert len({tuple(r) for r in w}) == 200  # 200 different resamples


def test_undefined_auc_is_a_note_not_a_crash(nih):
    index, targets, groups, scores = nih
    t = targets.copy()
    t[:, 0] = 0  # no positive at all for the first finding
    m = multilabel_metrics(t, scores, index.findings, groups=groups, n_boot=10)
    entry = m["per_finding"][index.findings[0]]
    assert entry["auc"] is None and entry["auc_ci95"] is None
    assert "AUC undefined: no positive" in entry["note"]
    assert m["findings_with_auc"] == len(index.findings) - 1
    assert any(n.startswith(index.findings[0]) for n in m["notes"])


def test_thresholds_come_from_the_data_they_are_given(nih):
    index, targets, _, scores = nih
    val, test = slice(0, 500), slice(500, None)
    chosen = choose_thresholds(targets[val], scores[val], index.findings, "youden", None)
    for j, name in enumerate(index.findings):
        assert chosen[name]["threshold"] == pytest.approx(youden_threshold(targets[val, j], scores[val, j]))
    on_test = choose_thresholds(targets[test], scores[test], index.findings, "youden", None)
    assert any(on_test[f]["threshold"] != chosen[f]["threshold"] for f in index.findings)
    fixed = choose_thresholds(targets[val], scores[val], index.findings, "argmax", None)
    assert {v["threshold"] for v in fixed.values()} == {0.5}
    sens = choose_thresholds(targets[val], scores[val], index.findings, "youden", 0.9)
    m = multilabel_metrics(targets[val], scores[val], index.findings, sens, n_boot=0)
    assert all(e["sensitivity"] >= 0.9 for e in m["per_finding"].values() if e["positives"])


def test_bootstrap_intervals_in_replicate_blocks_are_the_same(nih, monkeypatch):
    """NIH's official test split (25,596 images × 14 findings) made the micro-AUC bootstrap a
    (1000, 358k) array per temporary; computed in row blocks, the intervals are the same numbers."""
    import json

    import cxrlab.stats

    _, targets, groups, scores = nih
    targets = targets.copy()
    targets[::7, 2] = np.nan  # unknown labels leave cells out
    findings = [f"f{j}" for j in range(targets.shape[1])]
    thresholds = {f: {"threshold": 0.5} for f in findings}
    whole = multilabel_metrics(targets, scores, findings, thresholds, groups, n_boot=120, seed=3)
    monkeypatch.setattr(cxrlab.stats, "BOOTSTRAP_CELLS", 2_500)  # 2 replicates per finding block, 1 for micro
    blocks = multilabel_metrics(targets, scores, findings, thresholds, groups, n_boot=120, seed=3)
    # the same resamples; BCa's interpolation may differ in the last bit of a float
    assert json.dumps(_rounded(blocks), sort_keys=True) == json.dumps(_rounded(whole), sort_keys=True)
    assert whole["per_finding"]["f0"]["auc_ci95"] and whole["per_finding"]["f0"]["sensitivity_ci95"]


def test_target_sensitivity_one_is_reached_at_the_lowest_positive_score(nih):
    """A finding whose lowest-scoring known validation image is a positive: with a target sensitivity of 1.0
    its threshold is that score itself, and the image counts as detected (p >= threshold), on real targets."""
    index, targets, _, scores = nih
    j = index.findings.index("Effusion")
    t, s = targets[:300, j : j + 1].copy(), scores[:300, j : j + 1].copy()
    lowest_positive = int(np.flatnonzero(t[:, 0] == 1)[0])
    s[lowest_positive, 0] = s[:, 0].min() / 2  # make it the lowest score of all
    chosen = choose_thresholds(t, s, ["Effusion"], "youden", 1.0)
    assert chosen["Effusion"]["threshold"] == pytest.approx(s[lowest_positive, 0])
    m = multilabel_metrics(t, s, ["Effusion"], chosen, n_boot=0)
    assert m["per_finding"]["Effusion"]["sensitivity"] == 1.0


def _rounded(value):
    """``value`` with every float rounded to 12 decimals."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return round(value, 12) if isinstance(value, float) else value
