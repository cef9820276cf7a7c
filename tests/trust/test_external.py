"""External validation: `cxr evaluate RUN --data OTHER --label-map ...` writes internal vs external
metrics side by side, with CIs, the drops, and the external images that duplicate training images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cxrlab.metrics import metrics_for
from tests.browser import check_page
from tests.conftest import run_cli
from tests.trust.conftest import one_line_error


@pytest.fixture(scope="module")
def external_set(tmp_path_factory, covid_dir, kermany_dir, covid_small) -> tuple[Path, Path]:
    """Another layout and other class names: COVID = covid-challenge test covid images the run has not
    seen, Normal = kermany-224 test NORMAL images; plus one training image planted under a new name."""
    root = tmp_path_factory.mktemp("external") / "other hospital"
    (root / "COVID").mkdir(parents=True)
    (root / "Normal").mkdir()
    for f in sorted((covid_dir / "test" / "covid").iterdir())[8:20]:
        shutil.copy(f, root / "COVID" / f.name)
    for f in sorted((kermany_dir / "test" / "NORMAL").iterdir())[:20]:
        shutil.copy(f, root / "Normal" / f.name)
    planted = sorted((covid_small / "train" / "covid").iterdir())[0]
    shutil.copy(planted, root / "COVID" / f"renamed{planted.suffix}")
    return root, planted


def test_external_validation_side_by_side(binary_run, external_set, tmp_path):
    data, planted = external_set
    out = tmp_path / "ext"
    mapping = "COVID=covid,Normal=normal"
    proc = run_cli(
        "evaluate", str(binary_run), "--data", str(data), "--label-map", mapping, "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    ext = json.loads((out / "external.json").read_text())
    internal = json.loads((binary_run / "metrics.json").read_text())["test"]
    assert ext["external"]["n"] == 33 and ext["external"]["counts"] == {"covid": 13, "normal": 20}
    rows = {r["metric"]: r for r in ext["metrics"]}
    # one row per registered metric (cxrlab.metrics.REGISTRY), the threshold's decision metrics included
    assert {"accuracy", "balanced accuracy", "ROC AUC", "expected calibration error"} <= set(rows)
    assert set(rows) == {m.label for m in metrics_for("single")}
    assert rows["accuracy"]["internal"] == pytest.approx(internal["accuracy"])
    assert rows["sensitivity"]["internal"] == pytest.approx(internal["per_class"]["covid"]["sensitivity"])
    auc = rows["ROC AUC"]
    assert auc["internal"] == pytest.approx(internal["auc"])
    assert auc["internal_ci95"] == pytest.approx(internal["auc_ci95"])
    assert auc["external_ci95"][0] <= auc["external"] <= auc["external_ci95"][1]
    assert auc["drop"] == pytest.approx(auc["internal"] - auc["external"])
    for cls in ("covid", "normal"):
        for key in ("sensitivity", "specificity"):
            row = ext["per_class"][cls][key]
            assert row["internal"] == pytest.approx(internal["per_class"][cls][key])
            assert row["external_ci95"] is not None and row["drop"] is not None
    op = ext["operating_point"]
    assert (
        op["positive_class"] == "covid"
        and [r["metric"] for r in op["rows"]][1] == "sensitivity at the threshold"
    )
    overlap = ext["overlap_with_training"]
    assert overlap["checked"] and overlap["external_images"] == 33
    exact = [p for p in overlap["pairs"] if p["kind"] == "exact"]
    assert [Path(p["training"]).name for p in exact] == [planted.name]
    assert any("not independent" in s for s in ext["summary"])
    assert any(s.startswith("ROC AUC") for s in ext["summary"])
    html = (out / "external.html").read_text()
    assert "internal test" in html and "renamed" in html and "95% bootstrap" in html
    check_page(out / "external.html", "external")
    check_page(out / "report.html", "eval_report")


def test_external_class_names_must_be_mapped(binary_run, external_set, tmp_path):
    data, _ = external_set
    line = one_line_error(
        run_cli("evaluate", str(binary_run), "--data", str(data), "--out", str(tmp_path / "x"))
    )
    assert "--label-map" in line and "COVID" in line
    args = ["evaluate", str(binary_run), "--data", str(data), "--label-map", "Kovid=covid"]
    line = one_line_error(run_cli(*args, "--out", str(tmp_path / "y")))
    assert "'Kovid'" in line


def test_external_set_with_one_class(binary_run, pneumoniamnist_npz, tmp_path):
    # PneumoniaMNIST's test normals only (28 px Kermany images, upsampled): AUC and covid sensitivity are
    # undefined and must be reported as such, not as numbers
    out = tmp_path / "mnist"
    proc = run_cli("evaluate", str(binary_run), "--data", str(pneumoniamnist_npz), "--classes", "normal",
                   "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "AUC undefined (one class)" in proc.stdout and "Warning" not in proc.stderr
    ext = json.loads((out / "external.json").read_text())
    assert ext["external"]["counts"] == {"covid": 0, "normal": 234}
    auc = next(r for r in ext["metrics"] if r["metric"] == "ROC AUC")
    assert auc["external"] is None and auc["drop"] is None
    assert ext["per_class"]["covid"]["sensitivity"]["external"] is None
    assert ext["per_class"]["covid"]["specificity"]["external"] is not None
    sens = ext["operating_point"]["rows"][1]
    assert sens["external"] is None and sens["drop"] is None
    assert ext["overlap_with_training"]["checked"] is False
