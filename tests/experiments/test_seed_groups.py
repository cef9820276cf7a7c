"""`cxr train --seeds`: a run per seed and the spread; `cxr compare` on seed groups; bad input in one line."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from cxrlab.config import RunConfig
from tests.conftest import run_cli
from tests.trust.conftest import one_line_error

# PneumoniaMNIST (official split) capped at 40 images per class and split: a run takes seconds
QUICK = (
    "--image-size", "28", "--model", "small_cnn", "--epochs", "1", "--batch-size", "32",
    "--max-per-class", "40", "--no-tensorboard", "--set", "eval.tsne=false", "--set", "eval.bootstrap=0",
    "-q",
)  # fmt: skip


def test_seeds_writes_one_run_per_seed_and_the_spread(tmp_path, pneumoniamnist_npz):
    out = tmp_path / "group"
    proc = run_cli("train", "--data", str(pneumoniamnist_npz), *QUICK, "--seeds", "0,3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    info = json.loads((out / "seeds.json").read_text())
    assert info["seeds"] == [0, 3]
    accs = []
    for seed in (0, 3):
        run = out / f"seed-{seed}"
        metrics = json.loads((run / "metrics.json").read_text())
        assert RunConfig.load(run / "config.yaml").train.seed == seed  # a complete run folder per seed
        assert (run / "model.safetensors").is_file() and (run / "predictions.csv").is_file()
        assert info["per_seed"][str(seed)]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
        assert info["per_seed"][str(seed)]["auc"] == pytest.approx(metrics["test"]["auc"])
        accs.append(metrics["test"]["accuracy"])
    s = info["summary"]["accuracy"]
    assert s["mean"] == pytest.approx(statistics.mean(accs))
    assert s["std"] == pytest.approx(statistics.stdev(accs))
    assert (s["min"], s["max"], s["n"]) == (min(accs), max(accs), 2)
    assert {"auc", "f1_macro", "balanced_accuracy"} <= set(info["summary"])
    rows = list(csv.DictReader((out / "seeds.csv").open()))
    assert [r["seed"] for r in rows] == ["0", "3", "mean", "std", "min", "max"]
    assert float(rows[2]["accuracy"]) == pytest.approx(s["mean"], abs=1e-6)
    assert "accuracy" in proc.stdout and "±" in proc.stdout  # the spread is printed at the end

    # a second group (other learning rate) and `cxr compare` over the two groups
    other = tmp_path / "group-lr"
    proc = run_cli(
        "train", "--data", str(pneumoniamnist_npz), *QUICK, "--lr", "1e-2", "--seeds", "0,3",
        "--out", str(other),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cmp = tmp_path / "cmp"
    proc = run_cli("compare", str(out), str(other), "--out", str(cmp))
    assert proc.returncode == 0, proc.stderr
    groups = {r["group"]: r for r in csv.DictReader((cmp / "groups.csv").open())}
    assert set(groups) == {"group", "group-lr"}
    assert float(groups["group"]["accuracy_mean"]) == pytest.approx(s["mean"], abs=1e-4)
    tests = [r for r in csv.DictReader((cmp / "group_tests.csv").open()) if r["metric"] == "accuracy"]
    assert len(tests) == 1 and tests[0]["shared_seeds"] == "2"
    assert 0 <= float(tests[0]["p_welch"]) <= 1 and 0 <= float(tests[0]["p_paired"] or 0) <= 1
    assert "Seed groups" in (cmp / "compare.md").read_text()
    assert "Welch" in proc.stdout
    # the seed runs are rows of the main table, never McNemar-tested against each other
    assert len(list(csv.DictReader((cmp / "compare.csv").open()))) == 4
    assert list(csv.DictReader((cmp / "pairwise.csv").open())) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--seeds", "a,b", "--out", "{tmp}/g"], "not a whole number"),
        (["--seeds", "1,2,1", "--out", "{tmp}/g"], "given twice"),
        (["--seeds", "5", "--out", "{tmp}/g"], "at least two seeds"),
        (["--seeds", "0,1", "--resume", "{tmp}/g"], "--resume"),
        (["--seeds", "0,1", "--seed", "2", "--out", "{tmp}/g"], "--seed and --seeds"),
    ],
)
def test_bad_seeds_are_one_line(tmp_path, args, needle):
    proc = run_cli("train", *[a.format(tmp=tmp_path) for a in args])
    assert proc.returncode == 2
    assert needle in one_line_error(proc)
    assert not (tmp_path / "g").exists()
