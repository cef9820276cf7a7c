"""Multi-label findings end to end on the real nih-1000 label file: masked BCE, pos_weight, the frozen
fast path, val_auc early stopping, per-finding thresholds on validation, predictions.csv, the report,
`cxr evaluate`, `cxr predict` and `cxr compare` — one trained run reused by every test."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxrlab.stats import youden_threshold
from cxrlab.training.module import masked_bce
from tests.conftest import DATA, run_cli

NIH = DATA / "nih-1000"
NIH_ARGS = ["--data", str(NIH / "images"), "--labels", str(NIH / "labels.csv"), "--labels-format", "nih"]
FAST = ["-q", "--no-tensorboard", "--set", "eval.tsne=false", "--set", "eval.bootstrap=50"]


def test_masked_bce_ignores_nan_targets_hand_computed():
    logits = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]])
    targets = torch.tensor([[1.0, float("nan"), 0.0], [0.0, 1.0, float("nan")]])
    pw = torch.tensor([2.0, 3.0, 4.0])

    def cell(x: float, y: float, w: float) -> float:
        s = 1 / (1 + np.exp(-x))
        return -(w * y * np.log(s) + (1 - y) * np.log(1 - s))

    known = [(0.5, 1, 2.0), (2.0, 0, 4.0), (1.5, 0, 2.0), (0.0, 1, 3.0)]
    expected = np.mean([cell(x, y, w) for x, y, w in known])
    assert float(masked_bce(logits, targets, pw)) == pytest.approx(expected, rel=1e-6)
    # whatever the logit behind a NaN target, the loss and its gradient there do not move
    moved = logits.clone()
    moved[0, 1], moved[1, 2] = 50.0, -50.0
    assert float(masked_bce(moved, targets, pw)) == pytest.approx(expected, rel=1e-6)
    x = logits.clone().requires_grad_(True)
    masked_bce(x, targets).backward()
    assert x.grad[0, 1] == 0 and x.grad[1, 2] == 0 and x.grad[0, 0] != 0


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory, torch_home):
    """Frozen ImageNet MobileNetV2 at 64 px on nih-1000 (fast path), balanced pos_weight, val_auc monitor."""
    if not (NIH / "labels.csv").is_file():
        pytest.skip("nih-1000 not available")
    out = tmp_path_factory.mktemp("ml") / "nih"
    proc = run_cli(
        "train", *NIH_ARGS, "--model", "mobilenet_v2", "--pretrained", "--freeze", "backbone",
        "--image-size", "64", "--epochs", "3", "--lr", "3e-3", "--out", str(out), *FAST,
        "--set", "train.pos_weight=balanced", "--set", "train.monitor=val_auc",
        env={"TORCH_HOME": str(torch_home.parents[2])},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out, proc


def _metrics(run):
    return json.loads((run / "metrics.json").read_text())


def test_run_is_multilabel_on_the_fast_path(ml_run):
    run, proc = ml_run
    m = _metrics(run)
    assert m["multilabel"] and m["fast_path"] and len(m["findings"]) == 14
    assert "test macro AUC" in proc.stdout and "micro AUC" in proc.stdout
    history = list(csv.DictReader((run / "history.csv").open()))
    assert "val_auc" in history[0] and all(0 <= float(r["val_auc"]) <= 1 for r in history)
    per = m["test"]["per_finding"]
    assert set(per) == set(m["findings"])
    assert 0 <= m["test"]["macro_auc"] <= 1 and m["test"]["bootstrap_unit"].startswith("patient (")


def test_balanced_pos_weight_is_negatives_over_positives_in_train(ml_run):
    run, _ = ml_run
    m = _metrics(run)
    rows = [r for r in csv.DictReader((run / "splits.csv").open()) if r["split"] == "train"]
    for f, w in zip(m["findings"], m["pos_weight"], strict=True):
        pos = sum(f in r["class"].split("|") for r in rows)
        assert w == pytest.approx((len(rows) - pos) / pos if pos else 1.0, rel=1e-3)


def test_predictions_csv_and_auc_equal_sklearn(ml_run):
    run, _ = ml_run
    m = _metrics(run)
    rows = list(csv.DictReader((run / "predictions.csv").open()))
    findings = m["findings"]
    assert list(rows[0])[:3] == ["path", "patient", "findings"]
    assert list(rows[0])[3:] == [f"{k}_{f}" for k in ("p", "true", "pred") for f in findings]
    assert len(rows) == m["test"]["n"]
    for f in findings:
        y = np.array([int(r[f"true_{f}"]) for r in rows])
        p = np.array([float(r[f"p_{f}"]) for r in rows])
        entry = m["test"]["per_finding"][f]
        if 0 < y.sum() < len(y):
            # the csv rounds to 6 digits (near-equal scores can tie); exact: test_multilabel_metrics.py
            assert entry["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-3)
        else:
            assert entry["auc"] is None and "undefined" in entry["note"]
        thr = m["thresholds"][f]["threshold"]
        assert all(int(r[f"pred_{f}"]) == (float(r[f"p_{f}"]) >= thr - 1e-6) for r in rows)
        assert all((f in r["findings"].split("|")) == (r[f"pred_{f}"] == "1") for r in rows)


def test_thresholds_chosen_on_validation_not_test(ml_run):
    """cxr predict on the run's validation images gives the probabilities the thresholds were chosen on."""
    run, _ = ml_run
    m = _metrics(run)
    val = [r for r in csv.DictReader((run / "splits.csv").open()) if r["split"] == "val"]
    proc = run_cli("predict", str(run), *[r["path"] for r in val], "--json")
    assert proc.returncode == 0, proc.stderr
    got = {r["image"]: r for r in json.loads(proc.stdout)}
    test_rows = list(csv.DictReader((run / "predictions.csv").open()))
    differs = 0
    for f in m["findings"]:
        y = np.array([f in r["class"].split("|") for r in val], dtype=int)
        p = np.array([got[r["path"]]["probabilities"][f] for r in val])
        saved = m["thresholds"][f]["threshold"]
        if 0 < y.sum() < len(y):
            assert saved == pytest.approx(youden_threshold(y, p), abs=2e-5)
            assert "on validation" in m["thresholds"][f]["method"]
        yt = np.array([int(r[f"true_{f}"]) for r in test_rows])
        pt = np.array([float(r[f"p_{f}"]) for r in test_rows])
        if 0 < yt.sum() < len(yt):
            differs += abs(youden_threshold(yt, pt) - saved) > 1e-6
    assert differs > 0  # the test split would have given other thresholds
    # predict names the findings above threshold as the class
    first = got[val[0]["path"]]
    assert first["class"] == ("|".join(first["findings"]) or "(none)")


def test_report_shows_data_warnings_first_and_every_finding(ml_run):
    run, _ = ml_run
    html = (run / "report.html").read_text()
    m = _metrics(run)
    assert "Test metrics, multi-label" in html and "macro ROC AUC" in html
    if m["audit"]["warnings"]:
        assert html.index("Data warnings") < html.index("Test metrics, multi-label")
    for f in m["findings"]:
        assert f"<td>{f}</td>" in html
    for plot in ("roc", "cooccurrence", "reliability", "curves"):
        assert (run / m["plots"][plot]).is_file()
    assert "the data audit could not run" not in " ".join(m["audit"]["warnings"])
    assert "findings_baseline" in m["audit"]


def test_evaluate_rescoring_matches_training(ml_run):
    run, _ = ml_run
    proc = run_cli("evaluate", str(run))
    assert proc.returncode == 0, proc.stderr
    assert "macro AUC" in proc.stdout
    again = json.loads((run / "evaluation" / "metrics.json").read_text())
    m = _metrics(run)
    assert again["test"]["n"] == m["test"]["n"]
    for f in m["findings"]:
        a, b = again["test"]["per_finding"][f]["auc"], m["test"]["per_finding"][f]["auc"]
        assert (a is None and b is None) or a == pytest.approx(b, abs=1e-4)
    assert (run / "evaluation" / "report.html").is_file()


def test_bad_pos_weight_length_is_one_line(tmp_path, torch_home):
    from tests.trust.conftest import one_line_error

    proc = run_cli("train", *NIH_ARGS, "--model", "small_cnn", "--image-size", "32", "--epochs", "1",
                   "--out", str(tmp_path / "r"), *FAST, "--set", "train.pos_weight=[1, 2]")  # fmt: skip
    line = one_line_error(proc)
    assert "train.pos_weight has 2 value(s) for 14 finding(s)" in line
    assert not (tmp_path / "r").exists()
    line = one_line_error(
        run_cli("train", *NIH_ARGS, "--out", str(tmp_path / "r"), "--set", "train.pos_weight=heavy")
    )
    assert "pos_weight" in line and "balanced" in line
    line = one_line_error(
        run_cli("train", *NIH_ARGS, "--out", str(tmp_path / "r"), *FAST, "--set", "data.labels.task=single")
    )
    assert "data.labels.task=single needs exactly one finding" in line


def test_compare_two_multilabel_runs_paired_auc_holm(ml_run, tmp_path, torch_home):
    """A second run (cached features: seconds) against the first: per-finding and macro AUC differences."""
    run, _ = ml_run
    other = tmp_path / "nih-nopw"
    proc = run_cli(
        "train", *NIH_ARGS, "--model", "mobilenet_v2", "--pretrained", "--freeze", "backbone",
        "--image-size", "64", "--epochs", "1", "--out", str(other), *FAST,
        env={"TORCH_HOME": str(torch_home.parents[2])},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("compare", str(run), str(other), "--out", str(tmp_path / "cmp"))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((tmp_path / "cmp" / "pairwise_auc.csv").open()))
    findings = _metrics(run)["findings"]
    assert [r["finding"] for r in rows] == findings + ["macro AUC"]
    tested = [r for r in rows if r["p_bootstrap"]]
    from cxrlab.stats import holm

    assert [float(r["p_holm"]) for r in tested] == pytest.approx(
        holm([float(r["p_bootstrap"]) for r in tested]), abs=1e-4
    )
    macro = rows[-1]
    assert float(macro["auc_a"]) == pytest.approx(_metrics(run)["test"]["macro_auc"], abs=1e-4)
    lo, hi = float(macro["difference_ci95_lo"]), float(macro["difference_ci95_hi"])
    assert lo <= float(macro["difference"]) <= hi
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "Multi-label: paired AUC differences" in md and "older run without predictions" not in md
