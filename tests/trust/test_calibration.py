"""Calibration and operating point: `--target-sensitivity` and `--temperature-scaling` on `cxr train`,
the threshold saved with the model and used by `cxr predict`, ECE and a reliability diagram."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxrlab.evaluation.evaluate import fit_temperature, logits_to_probs
from cxrlab.runs import read_csv
from tests.conftest import run_cli


def test_threshold_and_temperature_are_fitted_saved_and_reported(binary_run):
    meta = json.loads((binary_run / "model.json").read_text())
    metrics = json.loads((binary_run / "metrics.json").read_text())
    op = meta["operating_point"]
    assert op["positive_class"] == "covid" and op["method"] == "sensitivity >= 0.95 on validation"
    assert 0.0 < op["threshold"] < 1.0
    assert meta["temperature"] != 1.0 and metrics["calibration"]["temperature"] == meta["temperature"]
    test = metrics["test"]
    assert 0.0 <= test["ece"] <= 1.0 and test["operating_point"]["threshold"] == op["threshold"]
    assert (binary_run / "plots" / "reliability.png").is_file()
    assert "reliability" in (binary_run / "report.html").read_text()
    # the saved test predictions follow the threshold, not argmax
    rows = read_csv(binary_run / "predictions.csv")
    assert rows and all((r["pred"] == "covid") == (float(r["p_covid"]) >= op["threshold"]) for r in rows)


def test_predict_uses_the_saved_threshold(binary_run, covid_small):
    op = json.loads((binary_run / "model.json").read_text())["operating_point"]
    images = sorted((covid_small / "test" / "covid").iterdir()) + sorted(
        (covid_small / "test" / "normal").iterdir()
    )
    proc = run_cli("predict", str(binary_run), *map(str, images), "--json")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) == len(images)
    for r in results:
        assert (r["class"] == "covid") == (r["probabilities"]["covid"] >= op["threshold"])
    by_path = {r["path"]: r for r in read_csv(binary_run / "predictions.csv")}
    matched = [r for r in results if r["image"] in by_path]
    assert len(matched) == len(images)  # every image is a test image of the run: the comparison happened
    for r in matched:  # predict agrees with the evaluation's thresholded predictions on the same files
        assert by_path[r["image"]]["pred"] == r["class"]


def _val_predictions(run: Path) -> tuple[list[dict], list[str]]:
    """`cxr predict --json` on the run's validation images (from splits.csv) and their true classes."""
    rows = [r for r in read_csv(run / "splits.csv") if r["split"] == "val"]
    proc = run_cli("predict", str(run), *(r["path"] for r in rows), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), [r["class"] for r in rows]


def test_target_sensitivity_is_reached_on_validation_and_saved(binary_run):
    op = json.loads((binary_run / "model.json").read_text())["operating_point"]
    saved = json.loads((binary_run / "metrics.json").read_text())["test"]["operating_point"]
    assert {k: saved[k] for k in ("positive_class", "threshold", "method")} == op  # in metrics.json too
    results, truth = _val_predictions(binary_run)
    p_pos = [r["probabilities"]["covid"] for r, t in zip(results, truth, strict=True) if t == "covid"]
    assert len(p_pos) >= 2
    # the threshold is one of the positives' probabilities: allow re-computation noise around it
    reached = np.mean([p >= op["threshold"] - 1e-4 for p in p_pos])
    assert reached >= 0.95, (reached, p_pos, op)
    # metrics.json records the sensitivity reached on validation at that threshold
    on_val = json.loads((binary_run / "metrics.json").read_text())["val"]["operating_point"]
    assert on_val["threshold"] == op["threshold"] and on_val["sensitivity"] >= 0.95
    assert on_val["sensitivity"] == pytest.approx(reached, abs=1 / len(p_pos))


def test_threshold_is_the_one_the_validation_predictions_give(binary_run):
    """The saved threshold is recomputed from `cxr predict` on the run's validation images (splits.csv) with
    the same rule: chosen on validation, never on test."""
    from cxrlab.stats import youden_threshold

    op = json.loads((binary_run / "model.json").read_text())["operating_point"]
    results, truth = _val_predictions(binary_run)
    y = np.array([t == "covid" for t in truth], dtype=int)
    p = np.array([r["probabilities"]["covid"] for r in results])
    assert 0 < y.sum() < len(y)
    # the evaluation scores cached (bf16 where the CPU has it) backbone features, predict the images: the
    # probabilities differ by ~1e-4, the threshold by ~5e-4 (the test split's would be ~1e-2 away)
    assert op["threshold"] == pytest.approx(youden_threshold(y, p, target_sensitivity=0.95), abs=2e-3)


def _nll(results: list[dict], truth: list[str]) -> float:
    return float(
        -np.mean([np.log(max(r["probabilities"][t], 1e-12)) for r, t in zip(results, truth, strict=True)])
    )


def test_temperature_scaling_lowers_validation_nll(binary_run, tmp_path):
    fitted, truth = _val_predictions(binary_run)
    plain = tmp_path / "plain"
    shutil.copytree(binary_run, plain)
    meta = json.loads((plain / "model.json").read_text())
    assert meta["temperature"] != 1.0
    meta["temperature"] = 1.0
    (plain / "model.json").write_text(json.dumps(meta))
    unscaled, _ = _val_predictions(plain)
    assert _nll(fitted, truth) < _nll(unscaled, truth)


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (4000, 3))
    truth = 2.5  # labels drawn from softmax(logits / 2.5): the logits are over-confident by 2.5x
    p = logits_to_probs(logits, truth)
    y = np.array([rng.choice(3, p=row) for row in p])
    t = fit_temperature(logits, y)
    assert t == pytest.approx(truth, rel=0.1)

    def nll(temp: float) -> float:
        return float(-np.mean(np.log(logits_to_probs(logits, temp)[np.arange(len(y)), y])))

    assert nll(t) < nll(1.0) and nll(t) <= nll(truth) + 1e-6
    # well-calibrated logits keep a temperature near 1
    y1 = np.array([rng.choice(3, p=row) for row in logits_to_probs(logits, 1.0)])
    assert fit_temperature(logits, y1) == pytest.approx(1.0, rel=0.1)
