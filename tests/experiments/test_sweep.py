"""`cxr sweep`: Optuna studies whose trials are real run folders; two workers share one SQLite study."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import optuna
import pytest

from cxrlab.config import RunConfig
from cxrlab.errors import ConfigError
from cxrlab.experiments.sweep import parse_param, run_sweep
from tests.browser import check_page
from tests.conftest import run_cli


def test_parse_param():
    p = parse_param("lr=1e-3,5e-4")
    assert p.key == "train.lr" and p.values == [1e-3, 5e-4]
    p = parse_param("dropout=0.1:0.8")
    assert (p.low, p.high, p.log, p.values) == (0.1, 0.8, False, None)
    p = parse_param("train.batch_size=8:64:log")
    assert p.integer and p.log and p.key == "train.batch_size"


def test_two_workers_share_one_sqlite_study(base_yaml, tmp_path):
    out = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "cxrlab",
        "sweep",
        "--config",
        str(base_yaml),
        "--param",
        "lr=1e-3,1e-2",
        "--param",
        "dropout=0.2,0.5",
        "--out",
        str(out),
    ]
    workers = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        for _ in range(2)
    ]
    results = [w.communicate(timeout=900) for w in workers]
    for w, (stdout, stderr) in zip(workers, results, strict=True):
        assert w.returncode == 0, stderr
        assert "best trial" in stdout
    storage = f"sqlite:///{out / 'study.db'}"
    trials = optuna.load_study(study_name="cxr-sweep", storage=storage).get_trials()
    assert len(trials) == 4  # the grid, once: workers never repeat a point
    assert {(t.params["lr"], t.params["dropout"]) for t in trials} == {
        (1e-3, 0.2),
        (1e-3, 0.5),
        (1e-2, 0.2),
        (1e-2, 0.5),
    }
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes did work
    for t in trials:
        run = out / "trials" / f"trial-{t.number:03d}"
        status = json.loads((run / "status.json").read_text())["status"]
        assert status == ("finished" if t.state.name == "COMPLETE" else "pruned")
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 4 and {r["state"] for r in rows} <= {"complete", "pruned"}
    summary = json.loads((out / "sweep.json").read_text())
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert summary["best"]["value"] == pytest.approx(min(t.value for t in complete))
    assert summary["best"]["test_accuracy"] is not None
    assert len(list(csv.DictReader((out / "compare.csv").open()))) == len(complete)
    assert (out / "plots" / "history.png").stat().st_size > 5000
    if len(complete) >= 2:
        assert (out / "plots" / "importance.png").is_file()
    page = check_page(out / "sweep.html", "sweep")
    assert len(page["images"]) == len(summary["plots"]) >= 1
    assert {"Best trial", "Trials"} <= set(page["headings"])
    html = (out / "sweep.html").read_text()
    assert f"Trial <b>{summary['best']['trial']}</b>" in html
    assert html.count("<td>complete</td>") == len(complete)


def test_pruned_trials_stop_early_and_keep_their_folder(base_yaml, tmp_path):
    base = RunConfig.load(base_yaml).override(["train.epochs=4", "train.early_stopping=null"])
    out = tmp_path / "pruned"
    summary = run_sweep(base, ["lr=1e-3,1e-2"], out, pruner=optuna.pruners.ThresholdPruner(upper=1e-9))
    assert summary["trials"] == {"pruned": 2}
    assert summary["best"] is None
    for n in (0, 1):
        run = out / "trials" / f"trial-{n:03d}"
        assert json.loads((run / "status.json").read_text()) == {"status": "pruned", "epochs_done": 1}
        assert len((run / "history.csv").read_text().splitlines()) == 2  # header + the one epoch trained
        assert not (run / "metrics.json").exists()
    check_page(out / "sweep.html", "sweep")
    html = (out / "sweep.html").read_text()
    assert html.count("<td>pruned</td>") == 2 and "No trial has completed yet" in html


def test_sweep_bad_param_one_line(base_yaml, tmp_path):
    proc = run_cli("sweep", "--config", str(base_yaml), "--param", "lrr=1,2", "--out", str(tmp_path / "s"))
    assert proc.returncode == 2 and "unknown key 'lrr'" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    for param, message in (
        ("lr=1e-2:1e-5", "LOW < HIGH"),
        ("lr", "expected NAME="),
        ("lr=0:1:log", "LOW > 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_param(param)
