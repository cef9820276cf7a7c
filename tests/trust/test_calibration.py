"""Calibration and operating point: `--target-sensitivity` and `--temperature-scaling` on `cxr train`,
the threshold saved with the model and used by `cxr predict`, ECE and a reliability diagram."""

from __future__ import annotations

import json

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
    for r in results:  # predict agrees with the evaluation's thresholded predictions on the same files
        if r["image"] in by_path:
            assert by_path[r["image"]]["pred"] == r["class"]
