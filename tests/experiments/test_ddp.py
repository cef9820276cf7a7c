"""Two-process DDP on CPU (gloo) gives the metrics of one process, within a documented tolerance.

Tolerance (docs/experiments.md): test accuracy within 0.05, AUC within 0.02, test loss within 0.05.
With the whole training split in one batch per step, DDP's two half-batches average to the same
gradient as one process, so only floating-point summation order differs.
"""

from __future__ import annotations

import json

from tests.conftest import run_cli

ARGS = [
    "--classes",
    "covid,normal",
    "--max-per-class",
    "16",
    "--image-size",
    "96",
    "--model",
    "mobilenet_v2",
    "--pretrained",
    "--freeze",
    "backbone",
    "--epochs",
    "6",
    "--early-stopping",
    "100",
    "--device",
    "cpu",
    "--batch-size",
    "32",
    "-q",
    "--set",
    "eval.tsne=false",
    "--set",
    "eval.bootstrap=100",
]


def test_two_process_ddp_matches_one_process(covid_dir, torch_home, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = run_cli("train", "--data", str(covid_dir), *ARGS, "--devices", "1", "--out", str(one))
    assert p1.returncode == 0, p1.stderr
    p2 = run_cli(
        "train", "--data", str(covid_dir), *ARGS, "--devices", "2", "--strategy", "ddp", "--out", str(two)
    )
    assert p2.returncode == 0, p2.stderr
    assert p2.stdout.count("test accuracy") == 1  # only rank 0 reports
    a = json.loads((one / "metrics.json").read_text())["test"]
    b = json.loads((two / "metrics.json").read_text())["test"]
    assert a["n"] == b["n"]
    assert abs(a["accuracy"] - b["accuracy"]) <= 0.05
    assert abs(a["auc"] - b["auc"]) <= 0.02
    assert abs(a["loss"] - b["loss"]) <= 0.05
    cfg = (two / "config.yaml").read_text()
    assert "strategy: ddp" in cfg and "devices: '2'" in cfg
    h1 = (one / "history.csv").read_text().splitlines()
    h2 = (two / "history.csv").read_text().splitlines()
    assert len(h1) == len(h2) == 7  # one writer: no duplicated or interleaved rows
