"""End to end through the real `cxr` command on real radiographs."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from tests.browser import check_page
from tests.conftest import run_cli

REQUIRED = [
    "classes",
    "test.n",
    "test.accuracy",
    "test.accuracy_ci95",
    "test.balanced_accuracy",
    "test.auc",
    "test.loss",
    "test.per_class",
    "test.confusion_matrix",
    "timing.total_s",
    "timing.train_s",
    "params.total",
    "params.trainable",
]


def _get(d, dotted):
    for part in dotted.split("."):
        d = d[part]
    return d


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory, covid_dir, torch_home):
    out = tmp_path_factory.mktemp("runs") / "covid-fast"
    proc = run_cli(
        "train",
        "--data",
        str(covid_dir),
        "--classes",
        "covid,normal",
        "--model",
        "mobilenet_v2",
        "--pretrained",
        "--freeze",
        "backbone",
        "--epochs",
        "15",
        "--out",
        str(out),
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_fast_path_run_folder_is_complete(fast_run):
    out, proc = fast_run
    for name in (
        "config.yaml",
        "history.csv",
        "metrics.json",
        "model.safetensors",
        "model.json",
        "splits.csv",
        "report.html",
        "plots/curves.png",
        "plots/confusion.png",
        "plots/roc.png",
        "plots/tsne.png",
        "plots/reliability.png",
        "checkpoints/last.ckpt",
    ):
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    for key in REQUIRED:
        _get(m, key)
    assert m["fast_path"] is True
    assert m["classes"] == ["covid", "normal"]
    assert m["test"]["n"] == 62
    lo, hi = m["test"]["accuracy_ci95"]
    assert lo <= m["test"]["accuracy"] <= hi
    assert m["test"]["accuracy"] > 0.85  # pretrained features separate covid from normal easily
    assert m["params"]["trainable"] < m["params"]["total"] / 100
    header = (out / "history.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,train_loss,train_acc,val_loss,val_acc")
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5 and "95% CI" in html
    assert "report:" in proc.stdout
    page = check_page(out / "report.html", "run_report")
    assert len(page["images"]) >= 5 and all(i["width"] > 100 for i in page["images"])


def test_config_yaml_reruns_to_same_metrics(fast_run, tmp_path):
    out, _ = fast_run
    again = tmp_path / "again"
    proc = run_cli("train", "--config", str(out / "config.yaml"), "--out", str(again), "-q")
    assert proc.returncode == 0, proc.stderr
    a = json.loads((out / "metrics.json").read_text())["test"]
    b = json.loads((again / "metrics.json").read_text())["test"]
    assert a["accuracy"] == b["accuracy"] and a["auc"] == b["auc"] and a["loss"] == pytest.approx(b["loss"])


def test_evaluate_and_predict(fast_run, covid_dir):
    out, _ = fast_run
    proc = run_cli("evaluate", str(out))
    assert proc.returncode == 0, proc.stderr
    ev = json.loads((out / "evaluation" / "metrics.json").read_text())
    base = json.loads((out / "metrics.json").read_text())
    assert ev["test"]["n"] == 62
    assert ev["test"]["auc"] == pytest.approx(base["test"]["auc"], abs=0.02)  # fp32 vs cached features
    images = sorted((covid_dir / "test" / "covid").iterdir())[:2]
    proc = run_cli("predict", str(out), *map(str, images), "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert len(res) == 2 and set(res[0]["probabilities"]) == {"covid", "normal"}
    assert sum(res[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    # the class: the one the evaluation predicted for the same test file (binary: at the saved threshold)
    preds = {r["path"]: r["pred"] for r in csv.DictReader((out / "predictions.csv").open())}
    assert [r["class"] for r in res] == [preds[str(i)] for i in images]
    assert all(r["class"] in ("covid", "normal") for r in res)


def test_full_training_small_cnn_with_augmentation(small_covid, tmp_path):
    out = tmp_path / "cnn"
    proc = run_cli(
        "train",
        "--data",
        str(small_covid),
        "--model",
        "small_cnn",
        "--image-size",
        "64",
        "--epochs",
        "2",
        "--augment",
        "--batch-size",
        "8",
        "--out",
        str(out),
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["fast_path"] is False
    assert m["params"]["trainable"] == m["params"]["total"]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["data"]["augment"] is True and cfg["data"]["image_size"] == 64
    assert len((out / "history.csv").read_text().splitlines()) == 3


def test_refuses_to_overwrite_run(fast_run):
    out, _ = fast_run
    proc = run_cli("train", "--data", "x", "--out", str(out))
    assert proc.returncode != 0
    assert "already exists" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--data", "/nonexistent/folder"], "data not found"),
        (["--model", "resnet9000"], "unknown model"),
        (["--set", "train.lrr=1"], "unknown key 'lrr'"),
    ],
)
def test_bad_input_one_line(tmp_path, args, message, covid_dir):
    base = ["train", "--out", str(tmp_path / "r")]
    if "--data" not in args:
        base += ["--data", str(covid_dir)]
    proc = run_cli(*base, *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_demo_npz_quick(tmp_path, pneumoniamnist_npz):
    out = tmp_path / "mnist"
    proc = run_cli(
        "train",
        "--data",
        str(pneumoniamnist_npz),
        "--model",
        "small_cnn",
        "--image-size",
        "28",
        "--epochs",
        "1",
        "--max-per-class",
        "200",
        "--out",
        str(out),
        "-q",
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["classes"] == ["normal", "pneumonia"]
    assert m["test"]["n"] == 400


def test_missing_pretrained_weights_fail_fast_and_leave_nothing(tmp_path, covid_dir):
    out = tmp_path / "pt"
    env = {"TORCH_HOME": str(tmp_path / "empty-torch-home"), "CXRLAB_OFFLINE": "1"}
    proc = run_cli(
        "train",
        "--data",
        str(covid_dir),
        "--model",
        "resnet18",
        "--pretrained",
        "--freeze",
        "backbone",
        "--out",
        str(out),
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "resnet18-f37072fd.pth" in proc.stderr and "hub/checkpoints" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()  # a run that failed before training leaves no half-made folder


def test_timing_is_the_whole_command_stage_by_stage(small_covid, tmp_path):
    """metrics.json and the report give the command's wall time (audit, explain and report included) and
    each stage's seconds; they add up to it, and it is the time this test measures around the call."""
    import time

    out = tmp_path / "timed"
    t0 = time.perf_counter()
    run_cli("train", "--data", str(small_covid), "--model", "small_cnn", "--image-size", "64",
            "--epochs", "1", "--out", str(out), "-q", "--no-tensorboard", "--set", "eval.tsne=false",
            check=True)  # fmt: skip
    wall = time.perf_counter() - t0
    timing = json.loads((out / "metrics.json").read_text())["timing"]
    stages = timing["stages"]
    assert {"startup", "setup", "decode", "audit", "train", "evaluate", "explain", "report"} <= stages.keys()
    assert all(s >= 0 for s in stages.values())
    assert sum(stages.values()) == pytest.approx(timing["command_s"], abs=0.01)
    # the command is all of the call but the CLI's parsing and printing and the last rewrite of the files
    assert timing["command_s"] <= wall
    assert wall - timing["command_s"] < 0.1 * wall + 2.0, (wall, timing)
    assert timing["command_s"] > timing["total_s"]  # training's own clock stops before explain and report
    html = (out / "report.html").read_text()
    assert f"{timing['command_s']:.1f} s in all" in html
    assert all(f"<td>{name}</td>" in html for name in stages)

    # `cxr evaluate` records its own command the same way (issue 27 item 8)
    t0 = time.perf_counter()
    proc = run_cli("evaluate", str(out), "-q", check=True)
    wall = time.perf_counter() - t0
    timing = json.loads((out / "evaluation" / "metrics.json").read_text())["timing"]
    stages = timing["stages"]
    assert {"startup", "load and decode", "score", "plots", "explain", "report"} <= stages.keys()
    assert sum(stages.values()) == pytest.approx(timing["command_s"], abs=0.01)
    assert 0 < timing["command_s"] <= wall
    assert f"· {timing['command_s']:.1f} s" in proc.stdout.splitlines()[0]
    html = (out / "evaluation" / "report.html").read_text()
    assert f"{timing['command_s']:.1f} s in all" in html and "<td>score</td>" in html
