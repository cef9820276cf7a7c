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
from tests.experiments.test_sweep_postgres import postgres_url, run_workers  # noqa: F401 - postgres_url: the server


def test_parse_param():
    p = parse_param("lr=1e-3,5e-4")
    assert p.key == "train.lr" and p.values == [1e-3, 5e-4]
    p = parse_param("dropout=0.1:0.8")
    assert (p.low, p.high, p.log, p.values) == (0.1, 0.8, False, None)
    p = parse_param("train.batch_size=8:64:log")
    assert p.integer and p.log and p.key == "train.batch_size"


def test_parse_list_values():
    # YAML flow syntax: once a bracket appears, the text is one flow sequence of values
    p = parse_param("model.head.hidden=[512,512],[256,256]")
    assert p.values == [[512, 512], [256, 256]] and p.choices() == ["[512, 512]", "[256, 256]"]
    p = parse_param("dropout=[0.0, 0.3],[0.0,5e-1],0.2")
    assert p.key == "model.head.dropout" and p.values == [[0.0, 0.3], [0.0, 0.5], 0.2]
    assert p.decode(p.choices()[2]) == 0.2 and p.decode(p.choices()[1]) == [0.0, 0.5]
    # numbers stay numbers (PyYAML alone reads 1e-3 as text); quoted text stays text
    assert parse_param("lr=[1e-3,5E-4]").values == [[1e-3, 5e-4]]
    assert parse_param("x=['1e-3', adam]").values == [["1e-3", "adam"]]
    assert parse_param("lr=1e-3,5e-4").choices() == [1e-3, 5e-4]  # scalars: stored as before
    for text, message in (
        ("model.head.hidden=[512,512", "balanced brackets"),
        ("model.head.hidden=[512]x", "not a list of values"),
        ("model.head.hidden=512]", "not a list of values"),
        ("model.head.hidden=[512],{a: 1}", "numbers, text, true/false, null or \\[lists\\]"),
        ("model.head.hidden=[512],[512]", "repeated values"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_param(text)


def test_bad_list_param_is_one_line(base_yaml, tmp_path):
    param = "model.head.hidden=[16,16"
    proc = run_cli("sweep", "--config", str(base_yaml), "--param", param, "--out", str(tmp_path / "s"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "error: --param model.head.hidden=[16,16: not a list of values; write a list value in YAML "
        "flow syntax with balanced brackets, values separated by commas, "
        "e.g. model.head.hidden=[512,512],[256,256]"
    )
    base = RunConfig.load(base_yaml)
    for param, message in (  # checked against the config before anything trains
        ("model.head.hidden=[16],[wide]", "--param model.head.hidden=\\['wide'\\]: .*model.head.hidden"),
        ("dropout=[0.0,1.5]", "dropout must be in \\[0, 1\\), got 1.5"),
    ):
        with pytest.raises(ConfigError, match=message):
            run_sweep(base, [param], tmp_path / "s")
    assert not (tmp_path / "s" / "trials").exists()


def test_dropout_alias_keeps_zero_layers(base_yaml):
    from cxrlab.experiments.sweep import bind_params, trial_config

    head = ["model.head.hidden=[32,16]", "model.head.dropout=[0.0,0.3,0.0]"]
    base = RunConfig.load(base_yaml).override(head)
    p = parse_param("dropout=0.1,0.6")
    bind_params(base, [p])
    cfg = trial_config(base, [p], {"dropout": 0.6})
    assert cfg.model.head.dropout == [0.0, 0.6, 0.0]  # the one dropout layer, at the swept rate
    assert trial_config(base, [p], {"dropout": [0.2, 0.2, 0.0]}).model.head.dropout == [0.2, 0.2, 0.0]
    explicit = parse_param("model.head.dropout=0.6")  # the full key sets exactly what it is given
    bind_params(base, [explicit])
    assert trial_config(base, [explicit], {"model.head.dropout": 0.6}).model.head.dropout == 0.6
    scalar = RunConfig.load(base_yaml)  # a scalar base: the alias sets the scalar, as before
    q = parse_param("dropout=0.1,0.6")
    bind_params(scalar, [q])
    assert trial_config(scalar, [q], {"dropout": 0.1}).model.head.dropout == 0.1
    none = base.override(["model.head.dropout=[0.0,0.0]"])
    with pytest.raises(ConfigError, match="has no dropout layer"):
        bind_params(none, [parse_param("dropout=0.1,0.6")])


@pytest.fixture()
def list_base(base_yaml, tmp_path) -> str:
    """The sweep base with one hidden layer and dropout only before the output layer (report 000's head)."""
    path = tmp_path / "list-base.yaml"
    RunConfig.load(base_yaml).override(
        ["model.head.hidden=[32]", "model.head.dropout=[0.0,0.3]", "train.epochs=2"]
    ).save(path)
    return str(path)


def test_two_workers_share_one_sqlite_study(list_base, tmp_path):
    # list-valued grid choices on a shared study, and the dropout alias on a per-layer list base
    out = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "cxrlab",
        "sweep",
        "--config",
        list_base,
        "--param",
        "model.head.hidden=[32],[16]",
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
    assert {(t.params["model.head.hidden"], t.params["dropout"]) for t in trials} == {
        ("[32]", 0.2),
        ("[32]", 0.5),
        ("[16]", 0.2),
        ("[16]", 0.5),
    }
    for t in trials:  # each trial's config holds the full lists it used; the zero stays zero
        cfg = RunConfig.load(out / "trials" / f"trial-{t.number:03d}" / "config.yaml")
        assert cfg.model.head.hidden == json.loads(t.params["model.head.hidden"])
        assert cfg.model.head.dropout == [0.0, t.params["dropout"]]
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes did work
    for t in trials:
        run = out / "trials" / f"trial-{t.number:03d}"
        status = json.loads((run / "status.json").read_text())["status"]
        assert status == ("finished" if t.state.name == "COMPLETE" else "pruned")
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 4 and {r["state"] for r in rows} <= {"complete", "pruned"}
    assert {(r["model.head.hidden"], r["dropout"], r["model.head.dropout"]) for r in rows} == {
        ("[32]", "0.2", "[0.0, 0.2]"),
        ("[32]", "0.5", "[0.0, 0.5]"),
        ("[16]", "0.2", "[0.0, 0.2]"),
        ("[16]", "0.5", "[0.0, 0.5]"),
    }
    summary = json.loads((out / "sweep.json").read_text())
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert summary["best"]["value"] == pytest.approx(min(t.value for t in complete))
    best = summary["best"]
    assert isinstance(best["params"]["model.head.hidden"], list)
    assert best["config"]["model.head.dropout"] == [0.0, best["params"]["dropout"]]
    assert next(p for p in summary["params"] if p["name"] == "dropout")["layers"] == [0.0, 0.3]
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


def test_list_grid_on_a_shared_postgres_study(postgres_url, list_base, tmp_path):  # noqa: F811
    """List-valued grid choices through PostgreSQL: two workers with their own folders, each point once."""
    outs = [tmp_path / "machine-a", tmp_path / "machine-b"]
    cmd = [sys.executable, "-m", "cxrlab", "sweep", "--config", list_base, "--no-prune", "--param",
           "model.head.hidden=[32],[16,8]", "--storage", postgres_url, "--study", "pg-lists"]  # fmt: skip
    run_workers(cmd, outs)
    trials = optuna.load_study(study_name="pg-lists", storage=postgres_url).get_trials()
    assert sorted(t.params["model.head.hidden"] for t in trials) == ["[16, 8]", "[32]"]
    assert all(t.state.name == "COMPLETE" for t in trials)
    for t in trials:
        cfg = RunConfig.load(os.path.join(t.user_attrs["run"], "config.yaml"))
        assert cfg.model.head.hidden == json.loads(t.params["model.head.hidden"])
