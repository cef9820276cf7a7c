"""`cxr compare` on real runs: the table, test-set separation and paired significance tests."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy.stats import binom

from cxrlab.experiments.compare import COMPARE_FIELDS, image_key
from cxrlab.stats import holm, mcnemar_exact
from tests.browser import check_page
from tests.conftest import run_cli

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

    # Recompute the discordant counts from the two predictions.csv files.
    def correct(run):
        out = {}
        for r in _rows(run / "predictions.csv"):
            classes = [k[2:] for k in r if k.startswith("p_")]
            probs = [float(r[f"p_{c}"]) for c in classes]
            out[image_key(r["path"])] = classes[int(np.argmax(probs))] == r["true"]
        return out

    a, b = correct(runs["mnv2"]), correct(runs["cnn"])
    assert set(a) == set(b) and len(a) == int(pair["n"])
    a_only = sum(a[k] and not b[k] for k in a)
    b_only = sum(b[k] and not a[k] for k in a)
    assert (int(pair["a_only_correct"]), int(pair["b_only_correct"])) == (a_only, b_only)
    assert float(pair["p_mcnemar"]) == pytest.approx(mcnemar_exact(a_only, b_only), abs=1e-4)
    assert float(pair["accuracy_a"]) == pytest.approx(float(by["mnv2"]["test_accuracy"]), abs=1e-3)
    significant = float(pair["p_holm"]) < 0.05
    assert ("better" in pair["verdict"]) == significant
    md = (out / "compare.md").read_text()
    assert "| test set | run |" in md and "McNemar" in md
    html = (out / "compare.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    check_page(out / "compare.html", "compare")
    for plot in ("val_curves.png", "accuracy_vs_time.png"):
        assert (out / "plots" / plot).stat().st_size > 5000


def test_compare_bad_input_is_one_line(runs, tmp_path):
    proc = run_cli("compare", str(tmp_path), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "not a cxrlab run folder" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("compare", str(runs["mnv2"]), str(runs["mnv2"]), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "given twice" in proc.stderr
