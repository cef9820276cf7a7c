from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, precision_recall_fscore_support, roc_auc_score

import cxrlab.stats
from cxrlab.stats import (
    _auc_rows,
    bootstrap_ci,
    classification_metrics,
    expected_calibration_error,
    paired_bootstrap_difference,
    youden_threshold,
)


def _fake(n=200, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def test_metrics_agree_with_sklearn():
    y, probs = _fake()
    m = classification_metrics(y, probs, ["a", "b", "c"], n_boot=200)
    pred = probs.argmax(1)
    assert np.isclose(m["accuracy"], (pred == y).mean())
    assert np.isclose(m["balanced_accuracy"], balanced_accuracy_score(y, pred))
    assert np.isclose(m["auc"], roc_auc_score(y, probs, multi_class="ovr"))
    assert np.array(m["confusion_matrix"]).sum() == len(y)
    lo, hi = m["accuracy_ci95"]
    assert lo < m["accuracy"] < hi and hi - lo > 0.02
    assert m["per_class"]["a"]["support"] == (y == 0).sum()


def test_vectorised_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, size=(4, 50)).astype(float)  # many ties
    pos = rng.integers(0, 2, size=(4, 50)).astype(bool)
    expected = [roc_auc_score(p, s) for s, p in zip(scores, pos, strict=True)]
    assert np.allclose(_auc_rows(scores, pos), expected)


def test_ci_narrows_with_more_data():
    y1, p1 = _fake(60, 2, seed=2)
    y2, p2 = _fake(2000, 2, seed=2)
    w1 = np.diff(classification_metrics(y1, p1, ["a", "b"], n_boot=300)["accuracy_ci95"])[0]
    w2 = np.diff(classification_metrics(y2, p2, ["a", "b"], n_boot=300)["accuracy_ci95"])[0]
    assert w2 < w1 / 3


def test_ece_zero_for_perfect_calibration_and_large_for_overconfidence():
    y = np.array([0] * 50 + [1] * 50)
    confident_wrong = np.tile([0.99, 0.01], (100, 1))
    assert expected_calibration_error(y, confident_wrong) > 0.4
    perfect = np.eye(2)[y]
    assert expected_calibration_error(y, perfect) < 1e-9


def test_youden_and_target_sensitivity():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    thr = youden_threshold(y, p)
    assert 0.6 <= thr <= 0.7
    strict = youden_threshold(y, p, target_sensitivity=1.0)
    assert strict <= 0.4


def test_macro_and_weighted_averages_agree_with_sklearn_with_a_class_never_predicted():
    y, probs = _fake(150, 4, seed=3)
    probs[:, 3] = 0.0  # class "d" is never predicted: its precision is 0 (sklearn's zero_division=0)
    probs /= probs.sum(1, keepdims=True)
    m = classification_metrics(y, probs, ["a", "b", "c", "d"], n_boot=0)
    pred = probs.argmax(1)
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y, pred, labels=[0, 1, 2, 3], average=average, zero_division=0
        )
        assert [m[average][k] for k in ("precision", "recall", "f1")] == pytest.approx([p, r, f])
    # macro is the plain mean of the per-class values, weighted the support-weighted mean
    per = m["per_class"].values()
    assert m["macro"]["f1"] == pytest.approx(np.mean([c["f1"] for c in per]))
    assert m["weighted"]["recall"] == pytest.approx(m["accuracy"])  # weighted recall = accuracy


def test_inception_v3_aux_classifier_is_not_in_the_parameter_totals():
    """A real 299-px InceptionV3 build has the auxiliary classifier (training only); metrics.json's
    counts leave it out: PyTorch total = all parameters - aux; Keras total = Keras' InceptionV3
    without top (21,802,784) + the dense output layer (2048 × 4 + 4)."""
    from cxrlab.config import ModelConfig
    from cxrlab.evaluation.evaluate import param_counts
    from cxrlab.models import build_model

    model = build_model(ModelConfig(name="inception_v3", pretrained=False), 4, 299)
    assert model.aux_head is not None
    aux = sum(p.numel() for p in model.aux_head.parameters())
    everything = sum(p.numel() for p in model.parameters())
    counts = param_counts(model)
    assert counts["aux_excluded"] == aux > 2_000_000
    assert counts["total"] == everything - aux == counts["trainable"]
    assert counts["keras"]["total"] == 21_802_784 + 2048 * 4 + 4
    # Keras' InceptionV3 has no batch-norm γ (17,216 of them in torchvision's, all trainable here)
    assert counts["keras"]["trainable"] == counts["trainable"] - 17_216


def test_bootstrap_in_blocks_gives_the_same_intervals(monkeypatch):
    # 100,000 test images × 1,000 replicates would be 10⁸ resampled entries per array at once (GBs); drawn
    # in blocks of BOOTSTRAP_CELLS entries, the generator's stream and so the intervals are the same
    y, probs = _fake(3000, 3, seed=4)
    pred = probs.argmax(1)
    whole = bootstrap_ci(y, probs, pred, 400, seed=0)  # 1.2M entries: one block
    correct_a, correct_b = pred == y, np.roll(pred, 1) == y
    diff_whole = paired_bootstrap_difference(correct_a, correct_b, 400, seed=0)
    monkeypatch.setattr(cxrlab.stats, "BOOTSTRAP_CELLS", 3000 * 7)  # blocks of 7 replicates, the last of 1
    assert bootstrap_ci(y, probs, pred, 400, seed=0) == whole
    assert paired_bootstrap_difference(correct_a, correct_b, 400, seed=0) == diff_whole
    assert whole["accuracy"][0] < (pred == y).mean() < whole["accuracy"][1]
    assert np.isnan(paired_bootstrap_difference(correct_a, correct_b, 0)).all()  # no replicates: NaN
