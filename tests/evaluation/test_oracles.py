"""Outside oracles (issue 27 items 6 and 11): scikit-learn for every binary and multi-label metric cxrlab
reports, ``medmnist.Evaluator`` (pointed at ../shared/data/pneumoniamnist, no download) for PneumoniaMNIST
accuracy and AUC, and the Wilson interval plus an independent bootstrap for the accuracy CI — on the test
predictions of a real PneumoniaMNIST run (the demo's recipe, 1 epoch) and on nih-1000's real labels."""

from __future__ import annotations

import csv
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn import metrics as skm

from cxrlab.stats import classification_metrics
from tests.conftest import DATA, run_cli


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, pneumoniamnist_npz) -> Path:
    """The PneumoniaMNIST demo recipe on the shared official file, 1 epoch (as `cxr demo --epochs 1`)."""
    out = tmp_path_factory.mktemp("oracles") / "demo"
    with resources.as_file(resources.files("cxrlab") / "recipes" / "fast_pneumoniamnist.yaml") as recipe:
        run_cli(
            "train", "--config", str(recipe), "--data", str(pneumoniamnist_npz), "--epochs", "1",
            "--set", "train.warmup_epochs=0", "--set", "eval.explain=off", "--set", "eval.tsne=false",
            "--set", "eval.bootstrap=1000", "--no-tensorboard", "-q", "--out", str(out), check=True,
        )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def demo(demo_run) -> dict:
    """The run's metrics.json and its predictions.csv as arrays (true, pred, probabilities, paths)."""
    metrics = json.loads((demo_run / "metrics.json").read_text())
    with (demo_run / "predictions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    classes = metrics["classes"]
    return {
        "metrics": metrics,
        "classes": classes,
        "paths": [r["path"] for r in rows],
        "y": np.array([classes.index(r["true"]) for r in rows]),
        "pred": np.array([classes.index(r["pred"]) for r in rows]),
        "probs": np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows]),
    }


def _decision_block(test: dict, pred: np.ndarray, y: np.ndarray) -> dict:
    """The block of metrics.json whose accuracy is that of ``pred`` (predictions.csv's decision): the headline
    itself, or the operating point's numbers (metrics.json before the headline became the decision)."""
    acc = float(np.mean(pred == y))
    for block in (test, test.get("operating_point") or {}):
        if block.get("accuracy") is not None and block["accuracy"] == pytest.approx(acc, abs=1e-12):
            return block
    raise AssertionError(f"no accuracy in metrics.json equals predictions.csv's ({acc})")


def test_accuracy_ci_agrees_with_wilson_and_an_independent_bootstrap(demo):
    y, pred, test = demo["y"], demo["pred"], demo["metrics"]["test"]
    block = _decision_block(test, pred, y)
    lo, hi = block["accuracy_ci95"]
    correct = (pred == y).astype(float)
    n, k = len(correct), int(correct.sum())
    wilson = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    rng = np.random.default_rng(12345)  # another seed and another generator use than cxrlab's
    boot = np.array([correct[rng.integers(0, n, n)].mean() for _ in range(4000)])
    independent = np.percentile(boot, [2.5, 97.5])
    assert n == 624 and test["bootstrap_unit"] == "image"  # MedMNIST rows carry no patient ids
    for ref in ([wilson.low, wilson.high], independent):
        assert abs(lo - ref[0]) < 0.01 and abs(hi - ref[1]) < 0.01, (lo, hi, ref)
    assert lo < k / n < hi


def test_medmnist_evaluator_agrees_on_accuracy_and_auc(demo, pneumoniamnist_npz):
    """``medmnist.Evaluator('pneumoniamnist', 'test', root=...)`` reads the official labels of the shared
    file (it downloads nothing: it opens ROOT/pneumoniamnist.npz) and scores P(pneumonia) > 0.5."""
    medmnist = pytest.importorskip("medmnist", reason="pip install medmnist (in the dev extras)")
    assert demo["paths"] == [f"npz:test:{i}" for i in range(624)]  # the official test rows, in order
    evaluator = medmnist.Evaluator("pneumoniamnist", "test", root=str(pneumoniamnist_npz.parent))
    assert (evaluator.labels.ravel() == demo["y"]).all()
    auc, acc = evaluator.evaluate(demo["probs"])
    test = demo["metrics"]["test"]
    argmax = test["argmax"] if test.get("decision") == "threshold" else test
    assert argmax["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert test["auc"] == pytest.approx(auc, abs=1e-4)  # predictions.csv rounds probabilities to 6 digits


def test_every_binary_metric_equals_sklearn(demo):
    """metrics.json's numbers (from the run) and classification_metrics' (on the same arrays) against
    scikit-learn, at the decision predictions.csv records."""
    y, pred, probs, classes = demo["y"], demo["pred"], demo["probs"], demo["classes"]
    test = demo["metrics"]["test"]
    block = _decision_block(test, pred, y)
    assert block["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert test["auc"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1]), abs=1e-4)
    assert test["loss"] == pytest.approx(skm.log_loss(y, probs), abs=1e-4)
    mine = classification_metrics(y, probs, classes, n_boot=0, pred=pred)
    assert mine["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert mine["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert mine["auc"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1]))
    assert mine["loss"] == pytest.approx(skm.log_loss(y, probs))
    assert mine["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, zero_division=0)
    for c, name in enumerate(classes):
        row = mine["per_class"][name]
        other = 1 - c
        assert row["precision"] == pytest.approx(p[c]) and row["f1"] == pytest.approx(f[c])
        assert row["sensitivity"] == pytest.approx(r[c]) and row["support"] == s[c]
        assert row["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=other))
        assert row["auc"] == pytest.approx(skm.roc_auc_score(y == c, probs[:, c]))
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average=average, zero_division=0)
        assert [mine[average][k] for k in ("precision", "recall", "f1")] == pytest.approx([p, r, f])
    if "sensitivity" in block:  # the headline's sensitivity/specificity are the positive class's
        pos = classes.index(test["operating_point"]["positive_class"])
        assert block["sensitivity"] == pytest.approx(skm.recall_score(y, pred, pos_label=pos))
        assert block["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=1 - pos))


@pytest.fixture(scope="module")
def nih():
    """nih-1000's real labels (15 findings, 264 patients) and a real, weak score: the patient's age."""
    from cxrlab.config import LabelsConfig
    from cxrlab.data.index import discover

    labels = DATA / "nih-1000" / "labels.csv"
    if not labels.is_file():
        pytest.skip("nih-1000 not available")
    index = discover(DATA / "nih-1000" / "images", labels=LabelsConfig(file=str(labels), format="nih"))
    targets = np.stack([s.targets for s in index.samples]).astype(np.float64)
    ages = np.array([float(a) for a in index.table.column("Patient Age", index.samples)])
    rng = np.random.default_rng(1)
    scores = np.clip(ages[:, None] / 100 + 0.3 * rng.random(targets.shape), 0.01, 0.99)
    return index, targets, scores, [s.group for s in index.samples]


def test_every_multilabel_metric_equals_sklearn(nih):
    from cxrlab.evaluation.multilabel import choose_thresholds, multilabel_metrics

    index, targets, scores, groups = nih
    findings = index.findings
    thresholds = choose_thresholds(targets, scores, findings, "youden", None)
    m = multilabel_metrics(targets, scores, findings, thresholds, groups, n_boot=50)
    defined = []
    for j, name in enumerate(findings):
        e, y, p = m["per_finding"][name], targets[:, j].astype(int), scores[:, j]
        called = p >= thresholds[name]["threshold"]
        assert e["positives"] == int(y.sum()) and e["n"] == len(y)
        assert e["brier"] == pytest.approx(skm.brier_score_loss(y, p))
        assert e["sensitivity"] == pytest.approx(skm.recall_score(y, called))
        assert e["specificity"] == pytest.approx(skm.recall_score(1 - y, ~called))
        if 0 < y.sum() < len(y):
            defined.append(j)
            assert e["auc"] == pytest.approx(skm.roc_auc_score(y, p))
            assert e["average_precision"] == pytest.approx(skm.average_precision_score(y, p))
    assert m["macro_auc"] == pytest.approx(
        skm.roc_auc_score(targets[:, defined], scores[:, defined], average="macro")
    )
    assert m["micro_auc"] == pytest.approx(skm.roc_auc_score(targets, scores, average="micro"))
    assert m["mean_average_precision"] == pytest.approx(
        skm.average_precision_score(targets[:, defined], scores[:, defined], average="macro")
    )
    assert m["loss"] == pytest.approx(skm.log_loss(targets.ravel(), scores.ravel()))
    assert m["bootstrap_unit"] == "patient (264 patients)" and "BCa" in m["ci_method"]
