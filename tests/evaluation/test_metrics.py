from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, precision_recall_fscore_support, roc_auc_score

import cxrlab.stats
from cxrlab.stats import (
    _auc_rows,
    bootstrap_ci,
    ci_text,
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


def _rates(y: np.ndarray, p: np.ndarray, cut: float) -> tuple[float, float]:
    """Sensitivity and false-positive rate when ``p >= cut`` is called positive."""
    called = p >= cut
    return float(called[y == 1].mean()), float(called[y == 0].mean())


def test_thresholds_equal_an_exhaustive_search_over_the_validation_scores():
    """Youden's J and the target-sensitivity threshold against a brute-force search over every cut at a
    validation score: the chosen cut is the score maximising J (the highest score reaching the target),
    and the threshold lies halfway between it and the next lower score, which changes no validation call."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 80)
    p = np.round(np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0.001, 0.999), 3)  # some tied scores
    scores = np.unique(p)[::-1]  # every distinct cut, highest first

    def midway(k: int) -> float:
        return float((scores[k] + scores[k + 1]) / 2) if k + 1 < len(scores) else float(scores[k])

    j = [np.subtract(*_rates(y, p, s)) for s in scores]
    best = int(np.argmax(j))
    assert youden_threshold(y, p) == pytest.approx(midway(best))
    assert _rates(y, p, midway(best)) == _rates(y, p, scores[best])

    n_pos = int(y.sum())
    for target in (0.5, 0.8, np.ceil(0.9 * n_pos) / n_pos, 1.0):  # 0.9·n rounded up: reached exactly
        sens = np.array([_rates(y, p, s)[0] for s in scores])
        k = int(np.flatnonzero(sens >= target)[0])  # the highest cut that reaches the target
        thr = youden_threshold(y, p, target_sensitivity=target)
        assert thr == pytest.approx(midway(k)), target
        assert _rates(y, p, thr)[0] >= target
        assert k == 0 or sens[k - 1] < target  # no higher cut would have done


def test_ece_equals_a_direct_computation_including_confidence_one():
    # bins (0, 0.1], …, (0.9, 1]: a confidence of exactly 1.0 is in the last bin, bins are weighted by size
    y, probs = _fake(120, 3, seed=6)
    wrong = np.eye(3)[(y[:30] + 1) % 3]  # 30 images predicted wrong with confidence 1.0
    probs = np.concatenate([probs, wrong])
    y = np.concatenate([y, y[:30]])
    conf, correct = probs.max(1), probs.argmax(1) == y
    which = np.clip(np.ceil(conf * 10).astype(int) - 1, 0, 9)
    expected = sum(
        (which == b).mean() * abs(correct[which == b].mean() - conf[which == b].mean())
        for b in range(10)
        if (which == b).any()
    )
    assert expected_calibration_error(y, probs) == pytest.approx(expected)
    assert expected_calibration_error(y[:1].repeat(4), np.tile(np.eye(3)[(y[0] + 1) % 3], (4, 1))) == 1.0


def test_bootstrap_intervals_equal_scipy_bca_over_sklearn_metrics():
    """Every interval of bootstrap_ci: scipy.stats.bootstrap's BCa interval of the metric computed by
    scikit-learn on each resample of the test images (the images' indices resampled, the same seed)."""
    from scipy.stats import bootstrap
    from sklearn.metrics import recall_score

    y, probs = _fake(90, 2, seed=7)
    pred = probs.argmax(1)
    n_boot = 300
    ci = bootstrap_ci(y, probs, pred, n_boot, seed=11)
    metrics = {
        "accuracy": lambda i: float((y[i] == pred[i]).mean()),
        "balanced_accuracy": lambda i: balanced_accuracy_score(y[i], pred[i]),
        "auc": lambda i: roc_auc_score(y[i], probs[i, 1]),
        **{f"sensitivity_{c}": (lambda i, c=c: recall_score(y[i], pred[i], labels=[c], average=None)[0])
           for c in (0, 1)},
        **{f"specificity_{c}": (lambda i, c=c: recall_score(y[i] != c, pred[i] != c)) for c in (0, 1)},
    }  # fmt: skip
    assert set(ci) == set(metrics)
    for key, fn in metrics.items():
        res = bootstrap((np.arange(len(y)),), fn, n_resamples=n_boot, vectorized=False, method="BCa",
                        rng=np.random.default_rng(11))  # fmt: skip
        expected = [res.confidence_interval.low, res.confidence_interval.high]
        # the same resamples (to the last bit of a float); BCa's bias correction counts the resamples below
        # the estimate, and an AUC tied with it to 1e-16 may fall on either side: up to ~1e-4 apart
        assert ci[key] == pytest.approx(expected, abs=2e-4), key


def test_a_degenerate_interval_is_not_estimable_never_zero_width():
    """A perfectly separated small test set: every resample gives AUC 1 and accuracy 1; the interval is
    None with its reason, not '[1.000, 1.000]'; one class only: not estimable either."""
    y = np.array([0] * 10 + [1] * 4)
    p1 = np.r_[np.full(10, 0.1), np.full(4, 0.9)]
    probs = np.stack([1 - p1, p1], axis=1)
    m = classification_metrics(y, probs, ["a", "b"], n_boot=200, seed=0)
    assert m["auc"] == 1.0 and m["auc_ci95"] is None and m["accuracy_ci95"] is None
    assert "not estimable: every resample gives 1.000" in m["ci_notes"]["auc"]
    one = classification_metrics(np.zeros(12, int), probs[:12], ["a", "b"], n_boot=200, seed=0)
    assert one["auc_ci95"] is None and "one class" in one["ci_notes"]["auc"]
    assert ci_text(m["auc_ci95"]) == "[95% CI not estimable]"
    from cxrlab.reports.html import metric_table

    header, cells = metric_table(m, ["a", "b"])
    by_label = {row[0]: row[header.index("95% CI (bootstrap)")] for row in cells}
    assert by_label["accuracy"] == "not estimable" and by_label["ROC AUC"] == "not estimable"
    no_boot = classification_metrics(y, probs, ["a", "b"], n_boot=0, seed=0)
    assert {row[2] for row in metric_table(no_boot, ["a", "b"])[1]} == {""}  # none asked for: blank


def test_a_test_split_from_one_patient_is_not_estimable():
    """Every image from the same patient: there is one unit to resample, so each interval is None with the
    reason (scipy.stats.bootstrap would raise 'two or more observations')."""
    y, probs = _fake(30, 2, seed=1)
    m = classification_metrics(y, probs, ["a", "b"], n_boot=200, seed=0, groups=["p1"] * 30)
    assert m["accuracy_ci95"] is None and m["auc_ci95"] is None
    assert "single patient" in m["ci_notes"]["accuracy"]


def test_single_label_intervals_resample_patients():
    """With patient groups the bootstrap draws patients: duplicating every image under its own patient id
    (2 images each) keeps the interval that resampling the single images gives, while treating the copies as
    independent images narrows it by about 1/sqrt(2)."""
    y, probs = _fake(200, 2, seed=3)
    pred = probs.argmax(1)
    single = bootstrap_ci(y, probs, pred, 400, seed=5)["accuracy"]
    y2, probs2, pred2 = np.repeat(y, 2), np.repeat(probs, 2, axis=0), np.repeat(pred, 2)
    groups = [f"p{i}" for i in np.repeat(np.arange(200), 2)]
    by_patient = bootstrap_ci(y2, probs2, pred2, 400, seed=5, groups=groups)["accuracy"]
    by_image = bootstrap_ci(y2, probs2, pred2, 400, seed=5)["accuracy"]
    assert by_patient == pytest.approx(single, abs=1e-12)  # the same draws of the same 200 units
    width = by_patient[1] - by_patient[0]
    assert (by_image[1] - by_image[0]) / width == pytest.approx(2**-0.5, abs=0.12)


def test_an_estimate_on_the_edge_of_its_interval_is_noted():
    """nih-1000's Edema was reported as 0.848 [0.700, 0.869]-like intervals: an estimate on the edge of (or
    outside) its interval gets a note; one strictly inside gets none."""
    values = np.random.default_rng(0).uniform(0.70, 0.869, 1000)
    ci, note = cxrlab.stats._interval(0.869, 0.70, 0.869, values, "BCa")
    assert ci == [0.70, 0.869] and "edge of its interval" in note
    ci, note = cxrlab.stats._interval(0.90, 0.70, 0.869, values, "BCa")
    assert "edge of its interval or outside it" in note
    assert cxrlab.stats._interval(0.80, 0.70, 0.869, values, "BCa") == ([0.70, 0.869], None)
    with_nan = np.r_[values, [np.nan] * 10]  # 10 of 1010 resamples drew one class: left out, said so
    ci, note = cxrlab.stats._interval(0.80, np.nan, np.nan, with_nan, "BCa")
    assert ci == pytest.approx(list(np.percentile(values, [2.5, 97.5]))) and "10 drew one class" in note
    too_many = np.r_[values, [np.nan] * 100]
    assert cxrlab.stats._interval(0.80, np.nan, np.nan, too_many, "BCa")[0] is None


def test_per_class_specificity_is_the_recall_of_everything_else():
    from sklearn.metrics import recall_score

    y, probs = _fake(200, 3, seed=8)
    m = classification_metrics(y, probs, ["a", "b", "c"], n_boot=0)
    pred = probs.argmax(1)
    for c, name in enumerate("abc"):
        assert m["per_class"][name]["specificity"] == pytest.approx(recall_score(y != c, pred != c))
        assert m["per_class"][name]["sensitivity"] == pytest.approx(recall_score(y == c, pred == c))


def test_target_sensitivity_one_is_reached_when_the_lowest_validation_score_is_a_positive():
    """The operating point and the predictions made with it: with a target sensitivity of 1.0 and the
    lowest-scoring validation image a positive, the threshold is that score itself (there is no lower one
    to go halfway to), and that image must still be called positive (P >= threshold)."""
    from cxrlab.config import RunConfig
    from cxrlab.evaluation.evaluate import operating_point, thresholded

    cfg = RunConfig()
    cfg.eval.target_sensitivity = 1.0
    classes = ["covid", "normal"]  # the disease class is covid (index 0), whatever its position
    y_val = np.array([0, 1, 1, 0, 1, 0, 1, 0, 1, 0])
    p_covid = np.array([0.05, 0.1, 0.3, 0.6, 0.4, 0.8, 0.2, 0.9, 0.15, 0.7])
    probs = np.stack([p_covid, 1 - p_covid], axis=1)
    op = operating_point(cfg, classes, y_val, probs)
    assert op["positive_class"] == "covid" and op["threshold"] == pytest.approx(0.05)
    assert op["method"] == "sensitivity >= 1.0 on validation"
    pred = thresholded(probs, op, classes)
    assert (pred[y_val == 0] == 0).all()  # every covid image of validation called covid: sensitivity 1.0


def test_a_plug_in_registry_metric_gets_the_same_patient_bootstrap_as_the_built_in_ones():
    """A metric added to the registry (here accuracy again, under another name) gets exactly the interval
    the built-in accuracy gets — the one scipy BCa bootstrap over patients — not an image-level one."""
    from cxrlab.metrics import Metric, fill, registered

    y, probs = _fake(120, 2, seed=4)
    y2, probs2 = np.repeat(y, 2), np.repeat(probs, 2, axis=0)
    groups = [f"p{i}" for i in np.repeat(np.arange(120), 2)]
    pred2 = probs2.argmax(1)
    builtin = classification_metrics(y2, probs2, ["a", "b"], n_boot=300, seed=2, pred=pred2, groups=groups)
    acc = Metric(
        "accuracy_again", "accuracy again", ci="bootstrap", fn=lambda t, p, d: float(np.mean(t == d))
    )
    with registered(acc):
        split = fill({}, y2, probs2, pred2, 300, 2, groups)
        by_image = fill({}, y2, probs2, pred2, 300, 2)
    assert split["accuracy_again"] == pytest.approx(builtin["accuracy"])
    assert split["accuracy_again_ci95"] == pytest.approx(builtin["accuracy_ci95"], abs=1e-9)
    assert by_image["accuracy_again_ci95"] != pytest.approx(builtin["accuracy_ci95"], abs=1e-3)


def test_paired_difference_resamples_patients():
    """With patient ids the paired accuracy-difference CI resamples patients, never splitting one: it
    agrees with an independent cluster bootstrap (a plain loop) within 0.01, and it is wider than the
    image-level interval when a patient's images share their outcome (clustered data)."""
    rng = np.random.default_rng(3)
    patients = 60
    per_patient = rng.integers(1, 6, size=patients)
    groups = [f"p{i}" for i, k in enumerate(per_patient) for _ in range(k)]
    # one coin per patient and run: all images of a patient right or wrong together
    a_patient, b_patient = rng.random(patients) < 0.8, rng.random(patients) < 0.6
    index = np.repeat(np.arange(patients), per_patient)
    correct_a, correct_b = a_patient[index], b_patient[index]
    lo, hi = paired_bootstrap_difference(correct_a, correct_b, 4000, seed=1, groups=groups)

    diff = correct_a.astype(float) - correct_b.astype(float)
    members = [np.flatnonzero(index == i) for i in range(patients)]
    draws = []
    loop = np.random.default_rng(7)
    for _ in range(4000):
        idx = np.concatenate([members[i] for i in loop.integers(0, patients, patients)])
        draws.append(diff[idx].mean())
    ref_lo, ref_hi = np.percentile(draws, [2.5, 97.5])
    assert abs(lo - ref_lo) < 0.01 and abs(hi - ref_hi) < 0.01, ((lo, hi), (ref_lo, ref_hi))
    img_lo, img_hi = paired_bootstrap_difference(correct_a, correct_b, 4000, seed=1)
    assert hi - lo > 1.2 * (img_hi - img_lo)  # clustered outcomes: the image-level CI is too narrow
