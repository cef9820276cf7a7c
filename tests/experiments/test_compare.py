"""`cxr compare` on real runs: the table, test-set separation and paired significance tests."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from scipy.stats import binom

from cxrlab.experiments.compare import COMPARE_FIELDS, image_key
from cxrlab.stats import holm, mcnemar_exact
from tests.browser import check_page
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]

ISSUE_COLUMNS = [
    "run",
    "model",
    "task",
    "classes",
    "params_total",
    "params_trainable",
    "s_per_epoch",
    "s_per_step",
    "total_s",
    "test_loss",
    "test_accuracy",
    "test_accuracy_ci95_lo",
    "test_accuracy_ci95_hi",
    "test_auc",
    "device",
]


def _rows(path):
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_mcnemar_is_the_exact_binomial_test():
    # 9 vs 2 discordant pairs: two-sided exact p = 2 * P(X <= 2 | n=11, p=0.5)
    assert mcnemar_exact(9, 2) == pytest.approx(2 * binom.cdf(2, 11, 0.5))
    assert mcnemar_exact(2, 9) == pytest.approx(mcnemar_exact(9, 2))
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(20, 0) < 1e-5


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([0.02, 0.9]) == pytest.approx([0.04, 0.9])


def test_image_key_ignores_how_the_dataset_was_reached():
    assert image_key("/work/shared/data/x/test/covid/a.png") == image_key("../shared/data/x/test/covid/a.png")
    assert image_key("/d/test/covid/a.png") != image_key("/d/test/normal/a.png")


def test_compare_table_groups_by_test_set_and_tests_pairs(runs, tmp_path):
    out = tmp_path / "cmp"
    proc = run_cli("compare", str(runs["mnv2"]), str(runs["cnn"]), str(runs["other"]), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "2 different test sets" in proc.stderr  # said out loud, not mixed silently
    rows = _rows(out / "compare.csv")
    assert list(rows[0])[: len(ISSUE_COLUMNS)] == ISSUE_COLUMNS
    assert list(rows[0]) == COMPARE_FIELDS
    by = {r["run"]: r for r in rows}
    assert by["mnv2"]["test_set"] == by["cnn"]["test_set"] == "A" and by["other"]["test_set"] == "B"
    assert by["mnv2"]["model"] == "mobilenet_v2" and by["cnn"]["model"] == "small_cnn"
    assert int(by["mnv2"]["params_trainable"]) < int(by["mnv2"]["params_total"])
    for r in rows:
        assert (
            float(r["test_accuracy_ci95_lo"])
            <= float(r["test_accuracy"])
            <= float(r["test_accuracy_ci95_hi"])
        )

    pairs = _rows(out / "pairwise.csv")
    assert len(pairs) == 1  # never mnv2-vs-other or cnn-vs-other: different test images
    pair = pairs[0]
    assert {pair["run_a"], pair["run_b"]} == {"mnv2", "cnn"}

    # Recompute the discordant counts from the two predictions.csv files: each run's decision (its pred
    # column, the saved operating threshold), as metrics.json's headline, predict and serve
    def correct(run):
        return {image_key(r["path"]): r["pred"] == r["true"] for r in _rows(run / "predictions.csv")}

    a, b = correct(runs["mnv2"]), correct(runs["cnn"])
    assert set(a) == set(b) and len(a) == int(pair["n"])
    a_only = sum(a[k] and not b[k] for k in a)
    b_only = sum(b[k] and not a[k] for k in a)
    assert (int(pair["a_only_correct"]), int(pair["b_only_correct"])) == (a_only, b_only)
    assert float(pair["p_mcnemar"]) == pytest.approx(mcnemar_exact(a_only, b_only), abs=1e-4)
    assert float(pair["accuracy_a"]) == pytest.approx(float(by["mnv2"]["test_accuracy"]), abs=1e-3)
    # covid-challenge's covid and normal images name no patient: images are the resampling unit
    assert {r["patient"] for r in _rows(runs["mnv2"] / "predictions.csv")} == {""} and not pair["patients"]
    significant = float(pair["p_holm"]) < 0.05
    assert ("better" in pair["verdict"]) == significant
    md = (out / "compare.md").read_text()
    assert "| test set | run |" in md and "McNemar" in md
    html = (out / "compare.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    check_page(out / "compare.html", "compare")
    for plot in ("val_curves.png", "accuracy_vs_time.png"):
        assert (out / "plots" / plot).stat().st_size > 5000


def test_paired_difference_resamples_the_patients_predictions_name(runs, tmp_path):
    """Runs whose predictions.csv names patients (data with patient ids): the accuracy difference's CI
    resamples patients (pairwise.csv and compare.md say how many)."""
    copies = {}
    for name in ("mnv2", "cnn"):
        copies[name] = tmp_path / name
        shutil.copytree(runs[name], copies[name])
    rows = {n: _rows(copies[n] / "predictions.csv") for n in copies}
    order = sorted(image_key(r["path"]) for r in rows["mnv2"])
    patient = {k: f"p{i // 4}" for i, k in enumerate(order)}  # four consecutive test images per patient
    for name, table in rows.items():
        with (copies[name] / "predictions.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows({**r, "patient": patient[image_key(r["path"])]} for r in table)
    out = tmp_path / "cmp"
    proc = run_cli("compare", str(copies["mnv2"]), str(copies["cnn"]), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    (pair,) = _rows(out / "pairwise.csv")
    assert int(pair["patients"]) == len(set(patient.values())) == (len(order) + 3) // 4
    md = (out / "compare.md").read_text()
    assert f"({pair['patients']} patients)" in md


def test_compare_bad_input_is_one_line(runs, tmp_path):
    proc = run_cli("compare", str(tmp_path), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "not a cxrlab run folder" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("compare", str(runs["mnv2"]), str(runs["mnv2"]), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "given twice" in proc.stderr


def _sklearn_averages(run):
    """Macro and weighted P/R/F1 recomputed by sklearn from the run's predictions.csv (its decisions)."""
    from sklearn.metrics import precision_recall_fscore_support

    rows = _rows(run / "predictions.csv")
    classes = [k[2:] for k in rows[0] if k.startswith("p_")]
    y = [classes.index(r["true"]) for r in rows]
    pred = [classes.index(r["pred"]) for r in rows]
    return {
        average: precision_recall_fscore_support(
            y, pred, labels=list(range(len(classes))), average=average, zero_division=0
        )[:3]
        for average in ("macro", "weighted")
    }


def _summary(run):
    from cxrlab.config import RunConfig
    from cxrlab.models.summary import summarize

    cfg = RunConfig.load(run / "config.yaml")
    return summarize(cfg.model, len(cfg.data.classes), cfg.data.image_size, macs=False)


def test_compare_marks_fast_path_counts_both_conventions_and_averages(runs, tmp_path):
    out = tmp_path / "cmp"
    proc = run_cli("compare", str(runs["mnv2"]), str(runs["cnn"]), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    by = {r["run"]: r for r in _rows(out / "compare.csv")}
    mnv2, cnn = by["mnv2"], by["cnn"]

    # (a) fast-path timing: head only, flagged in csv, md and html, with the feature time
    metrics = json.loads((runs["mnv2"] / "metrics.json").read_text())
    assert metrics["fast_path"] is True
    assert (mnv2["epoch_timing"], cnn["epoch_timing"]) == ("head_only", "full_network")
    assert float(mnv2["features_s"]) == metrics["timing"]["features_s"] and cnn["features_s"] == ""
    md = (out / "compare.md").read_text()
    table = md.split("## Paired")[0].splitlines()
    md_rows = {line.split(" | ")[1]: line for line in table if line.startswith("| A | ")}
    assert f"{float(mnv2['s_per_epoch']):.3f} †" in md_rows["mnv2"] and "†" not in md_rows["cnn"]
    footnote = f"† head only: features computed once in {metrics['timing']['features_s']:.1f} s (fast path"
    assert footnote in md and "not comparable with full-network epochs" in md
    html = (out / "compare.html").read_text()
    assert f"{float(mnv2['s_per_epoch']):.3f} †" in html and footnote in html
    assert "†" in proc.stdout

    # (b) both parameter conventions, from metrics.json, equal to `cxr summary`'s for the same config
    for name in ("mnv2", "cnn"):
        row, summary = by[name], _summary(runs[name])
        assert row["params_source"] == "metrics.json"
        assert (int(row["params_total"]), int(row["params_trainable"])) == (summary.total, summary.trainable)
        assert (int(row["params_keras_total"]), int(row["params_keras_trainable"])) == (
            summary.keras_total,
            summary.keras_trainable,
        )
    # MobileNetV2's batch norms: Keras counts their moving statistics (non-trainable, frozen backbone)
    assert int(mnv2["params_keras_total"]) > int(mnv2["params_total"])
    assert int(mnv2["params_keras_trainable"]) == int(mnv2["params_trainable"])
    assert "| params PyTorch (trainable) | params Keras (trainable) |" in md
    keras_cell = f"{int(mnv2['params_keras_total']):,} ({int(mnv2['params_keras_trainable']):,})"
    assert keras_cell in md_rows["mnv2"] and keras_cell in html

    # (d) macro / weighted precision, recall, F1: metrics.json and compare.csv equal sklearn's
    for name in ("mnv2", "cnn"):
        test = json.loads((runs[name] / "metrics.json").read_text())["test"]
        for average, (p, r, f) in _sklearn_averages(runs[name]).items():
            assert [test[average][k] for k in ("precision", "recall", "f1")] == pytest.approx([p, r, f])
            assert [float(by[name][f"test_{k}_{average}"]) for k in ("precision", "recall", "f1")] == (
                pytest.approx([p, r, f], abs=1e-4)
            )
    assert "| macro P | macro R | macro F1 | weighted P | weighted R | weighted F1 |" in md
    assert "weighted F1" in html
    report = (runs["cnn"] / "report.html").read_text()  # the per-run report's metrics table
    assert "macro average" in report and "weighted average" in report


def test_compare_rebuilds_keras_counts_for_older_runs(runs, tmp_path):
    """A run whose metrics.json predates Keras counts: rebuilt from its config.yaml (here report 000's
    VGG16 recipe, whose printed Keras total is 21,139,777), or "—" when the config cannot be built."""
    import yaml

    old, broken = tmp_path / "old-vgg16", tmp_path / "broken"
    for copy in (old, broken):
        shutil.copytree(runs["cnn"], copy)
        metrics = json.loads((copy / "metrics.json").read_text())
        metrics["params"] = {"total": 1, "trainable": 1}  # as written before Keras counts existed
        del metrics["test"]["macro"], metrics["test"]["weighted"]  # and before macro/weighted P/R/F1
        (copy / "metrics.json").write_text(json.dumps(metrics))
    recipe = yaml.safe_load((ROOT / "configs" / "covid_vgg16_binary.yaml").read_text())
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    cfg["model"], cfg["data"]["image_size"] = recipe["model"], recipe["data"]["image_size"]
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    cfg["model"]["name"] = "no_such_model"
    (broken / "config.yaml").write_text(yaml.safe_dump(cfg))

    out = tmp_path / "cmp"
    proc = run_cli("compare", str(old), str(broken), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    by = {r["run"]: r for r in _rows(out / "compare.csv")}
    assert by["old-vgg16"]["params_source"] == "rebuilt from config.yaml"
    assert int(by["old-vgg16"]["params_keras_total"]) == 21_139_777
    assert int(by["old-vgg16"]["params_keras_trainable"]) == 6_424_065
    assert int(by["old-vgg16"]["params_total"]) == 21_138_753  # PyTorch: no batch-norm statistics
    assert by["broken"]["params_keras_total"] == "" and by["broken"]["params_total"] == "1"
    md = (out / "compare.md").read_text()
    assert "21,139,777 (6,424,065)" in md
    assert "rebuilt from the run's config.yaml" in md and "No Keras-convention count for broken" in md
    for average, (p, r, f) in _sklearn_averages(old).items():  # from predictions.csv
        assert [float(by["old-vgg16"][f"test_{k}_{average}"]) for k in ("precision", "recall", "f1")] == (
            pytest.approx([p, r, f], abs=1e-4)
        )
    broken_row = next(line for line in md.splitlines() if "| broken |" in line)
    assert "| 1 (1) | — |" in broken_row
