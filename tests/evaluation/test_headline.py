"""The headline is the deployed decision (issue 27 items 1 and 3): metrics.json, predictions.csv, the report,
`cxr compare` and the CLI agree by construction, checked against scikit-learn on the written predictions;
older metrics.json files migrate on read; one registry entry reaches every table; a model that predicts one
class is named."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    matthews_corrcoef,
    precision_recall_fscore_support,
    recall_score,
)

from cxrlab.metrics import Metric, metrics_for, read_metrics, registered
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--no-tensorboard", "-q", "--set", "eval.explain=off", "--set", "eval.tsne=false"]
QUICK = [
    "--image-size", "28", "--model", "small_cnn", "--epochs", "1", "--batch-size", "32",
    "--max-per-class", "40", *FAST, "--set", "eval.bootstrap=50",
]  # fmt: skip


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, pneumoniamnist_npz) -> tuple[Path, str]:
    """The demo recipe (fast_pneumoniamnist: Youden threshold, test-time shift) on 150 images per class and
    split, 2 epochs; its stdout."""
    out = tmp_path_factory.mktemp("headline") / "pmnist"
    recipe = str(ROOT / "configs" / "fast_pneumoniamnist.yaml")
    proc = run_cli(
        "train", "--config", recipe, "--data", str(pneumoniamnist_npz), "--epochs", "2",
        "--max-per-class", "150",
        "--set", "eval.bootstrap=200", *FAST, "--out", str(out), check=True,
    )  # fmt: skip
    return out, proc.stdout


def test_predictions_csv_recovers_the_headline_exactly(demo_run):
    run, stdout = demo_run
    m = json.loads((run / "metrics.json").read_text())
    test, classes = m["test"], m["classes"]
    assert m["schema_version"] == 2 and test["decision"] == "threshold"
    op = test["operating_point"]
    pos = op["positive_class"]
    rows = _rows(run / "predictions.csv")
    y = [r["true"] for r in rows]
    pred = [r["pred"] for r in rows]
    # the pred column is the saved threshold's decision (what predict and serve apply)
    assert all((r["pred"] == pos) == (float(r[f"p_{pos}"]) >= op["threshold"] - 1e-6) for r in rows)
    neg = next(c for c in classes if c != pos)
    assert test["accuracy"] == accuracy_score(y, pred)
    assert test["sensitivity"] == recall_score(y, pred, pos_label=pos)
    assert test["specificity"] == recall_score(y, pred, pos_label=neg)
    assert test["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    assert test["confusion_matrix"] == confusion_matrix(y, pred, labels=classes).tolist()
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            y, pred, labels=classes, average=average, zero_division=0
        )
        assert [test[average][k] for k in ("precision", "recall", "f1")] == pytest.approx(
            [p, r, f], abs=1e-12
        )
    # argmax beside it, labelled: the most probable class of the saved probabilities
    argmax = [classes[int(np.argmax([float(r[f"p_{c}"]) for c in classes]))] for r in rows]
    assert test["argmax"]["accuracy"] == pytest.approx(accuracy_score(y, argmax), abs=1.5 / len(rows))
    lo, hi = test["accuracy_ci95"]
    assert lo <= test["accuracy"] <= hi
    # the CLI's summary leads with the same number, at the threshold, argmax beside it
    line = next(s for s in stdout.splitlines() if s.startswith("test accuracy"))
    assert line.startswith(
        f"test accuracy {test['accuracy']:.3f} [95% CI {lo:.3f}–{hi:.3f}] at the threshold"
    )
    assert f"(argmax accuracy {test['argmax']['accuracy']:.3f})" in line
    html = (run / "report.html").read_text()
    assert "at argmax (not deployed)" in html and "Decision rule" in html
    assert html.index("Decision rule") < html.index("at argmax (not deployed)")


def test_compare_pairs_the_decisions_that_predictions_csv_holds(demo_run, tmp_path):
    """`cxr compare` of the run and a copy evaluated at argmax: McNemar's discordant counts are those of the
    two pred columns, and each run's compare.csv accuracy is its metrics.json headline."""
    run, _ = demo_run
    other = tmp_path / "argmax-copy"
    shutil.copytree(run, other)
    rows = _rows(other / "predictions.csv")
    classes = json.loads((run / "metrics.json").read_text())["classes"]
    for r in rows:  # the same probabilities, decided at argmax
        r["pred"] = classes[int(np.argmax([float(r[f"p_{c}"]) for c in classes]))]
    with (other / "predictions.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "cmp"
    proc = run_cli("compare", str(run), str(other), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    a = {r["path"]: r["pred"] == r["true"] for r in _rows(run / "predictions.csv")}
    b = {r["path"]: r["pred"] == r["true"] for r in rows}
    pair = _rows(out / "pairwise.csv")[0]
    assert int(pair["a_only_correct"]) == sum(a[k] and not b[k] for k in a)
    assert int(pair["b_only_correct"]) == sum(b[k] and not a[k] for k in a)
    headline = json.loads((run / "metrics.json").read_text())["test"]["accuracy"]
    assert float(pair["accuracy_a"]) == pytest.approx(headline, abs=1e-4)
    by = {r["run"]: r for r in _rows(out / "compare.csv")}
    assert float(by[run.name]["test_accuracy"]) == pytest.approx(headline, abs=1e-4)
    md = (out / "compare.md").read_text()
    assert "| test accuracy [95% CI] |" in md and f"{headline:.3f} [" in md


def _as_version_1(metrics: dict) -> dict:
    """metrics.json as cxrlab wrote it before schema versions: argmax at the top, the threshold's numbers
    under operating_point only."""
    old = json.loads(json.dumps(metrics))
    for key in ("schema_version", "warnings"):
        old.pop(key, None)
    for split in ("test", "val"):
        s = old[split]
        s.update(s.pop("argmax"))
        for k in (
            "decision",
            "single_class",
            "sensitivity",
            "sensitivity_ci95",
            "specificity",
            "specificity_ci95",
        ):
            s.pop(k, None)
    return old


def test_version_1_metrics_migrate_on_read_and_newer_fail_in_one_line(demo_run, tmp_path):
    run, _ = demo_run
    current = json.loads((run / "metrics.json").read_text())
    old_run = tmp_path / "old-run"
    shutil.copytree(run, old_run)
    (old_run / "metrics.json").write_text(json.dumps(_as_version_1(current)))
    migrated = read_metrics(old_run / "metrics.json")
    t, c = migrated["test"], current["test"]
    assert migrated["schema_version"] == 2 and t["decision"] == "threshold"
    for key in ("accuracy", "sensitivity", "specificity", "confusion_matrix"):
        assert t[key] == c[key]
    assert t["balanced_accuracy"] == pytest.approx(c["balanced_accuracy"], abs=1e-12)
    assert t["macro"] == pytest.approx(c["macro"]) and t["weighted"] == pytest.approx(c["weighted"])
    assert t["argmax"]["accuracy"] == c["argmax"]["accuracy"]
    assert t["per_class"]["pneumonia"]["sensitivity"] == c["per_class"]["pneumonia"]["sensitivity"]
    # an old folder compares at its decision too
    proc = run_cli("compare", str(old_run), "--out", str(tmp_path / "cmp"))
    assert proc.returncode == 0, proc.stderr
    assert float(_rows(tmp_path / "cmp" / "compare.csv")[0]["test_accuracy"]) == pytest.approx(
        c["accuracy"], abs=1e-4
    )
    newer = tmp_path / "newer-run"
    shutil.copytree(run, newer)
    (newer / "metrics.json").write_text(json.dumps({**current, "schema_version": 99}))
    proc = run_cli("compare", str(newer), "--out", str(tmp_path / "cmp2"))
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(err) == 1 and "schema version 99" in err[0] and "metrics.json" in err[0]


def test_one_registry_entry_reaches_every_table(tmp_path, pneumoniamnist_npz):
    """docs/architecture.md's worked example: Matthews' correlation, registered once, is computed with a
    bootstrap CI, written to metrics.json and shown by the report, compare, seed groups, external validation
    and the served model card."""
    from cxrlab.deploy.serve import model_card
    from cxrlab.evaluation.inference import load_run
    from cxrlab.pipeline.external import compare as external_compare
    from cxrlab.pipeline.seeds import headline

    mcc = Metric(
        "mcc",
        "Matthews correlation",
        ci="bootstrap",
        decision=True,
        fn=lambda y, p, pred: matthews_corrcoef(y, pred),
    )
    with registered(mcc):
        run = tmp_path / "run"
        run_cli("train", "--data", str(pneumoniamnist_npz), *QUICK, "--out", str(run), check=True)
        m = json.loads((run / "metrics.json").read_text())
        rows = _rows(run / "predictions.csv")
        want = matthews_corrcoef([r["true"] for r in rows], [r["pred"] for r in rows])
        assert m["test"]["mcc"] == pytest.approx(want, abs=1e-12)
        lo, hi = m["test"]["mcc_ci95"]
        assert lo <= m["test"]["mcc"] <= hi and lo < hi
        assert "Matthews correlation" in (run / "report.html").read_text()
        assert headline(m)["mcc"] == pytest.approx(want)
        proc = run_cli("compare", str(run), "--out", str(tmp_path / "cmp"))
        assert proc.returncode == 0, proc.stderr
        row = _rows(tmp_path / "cmp" / "compare.csv")[0]
        assert float(row["test_mcc"]) == pytest.approx(want, abs=1e-4) and row["test_mcc_ci95_lo"]
        assert "Matthews correlation [95% CI]" in (tmp_path / "cmp" / "compare.md").read_text()
        assert "Matthews correlation" in [r["metric"] for r in external_compare(m, m)["metrics"]]
        card = model_card(load_run(run), "r")
        assert card["metrics"]["mcc"]["value"] == pytest.approx(want)
    assert "mcc" not in {x.name for x in metrics_for("single")}


def test_a_model_that_predicts_one_class_is_named(tmp_path, covid_dir):
    """The issue's reproduction: small_cnn on covid vs normal calls every validation and test image covid at
    argmax; the report's top and the CLI's last line say so, from the written predictions."""
    out = tmp_path / "R"
    proc = run_cli(
        "train", "--data", str(covid_dir), "--classes", "covid,normal", "--model", "small_cnn", *FAST,
        "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    rows = _rows(out / "predictions.csv")
    classes = m["classes"]
    argmax = {classes[int(np.argmax([float(r[f"p_{c}"]) for c in classes]))] for r in rows}
    decided = {r["pred"] for r in rows}
    assert argmax == {"covid"}  # as the issue found: argmax accuracy 0.5
    assert m["test"]["argmax"]["accuracy"] == 0.5 and m["test"]["argmax"]["single_class"] == "covid"
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("warning: ") and "only 'covid'" in last and "argmax" in last
    report = (out / "report.html").read_text()
    assert report.index("only &#39;covid&#39;") < report.index("Test metrics")
    if len(decided) == 1:  # the deployed rule predicting one class would be named first
        assert any("at its decision rule" in w for w in m["warnings"])
    else:
        assert not any("at its decision rule" in w for w in m["warnings"])
