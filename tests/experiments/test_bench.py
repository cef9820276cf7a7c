"""`cxr bench` measures real training and inference steps; absent devices are skipped and named."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]


def test_bench_cpu_fp32_bf16(tmp_path):
    out = tmp_path / "bench"
    proc = run_cli(
        "bench",
        "--models",
        "small_cnn",
        "--devices",
        "cpu,cuda",
        "--precision",
        "fp32,bf16",
        "--batch-size",
        "8",
        "--image-size",
        "32",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--dataset-size",
        "100",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((out / "bench.csv").open()))
    cpu = [r for r in rows if r["device"] == "cpu"]
    assert [r["precision"] for r in cpu] == ["fp32", "bf16"]
    for r in cpu:
        assert float(r["train_img_s"]) > 0 and float(r["infer_img_s"]) > 0
        assert float(r["train_s_per_epoch"]) == pytest.approx(
            math.ceil(100 / 8) * float(r["train_s_per_step"]), abs=0.01
        )
        # peak memory is recorded (the ordering of ru_maxrss values is guaranteed by the OS, not tested)
        assert all(
            math.isfinite(float(r[k])) and float(r[k]) > 0
            for k in ("base_mb", "infer_peak_mb", "train_peak_mb")
        )
        assert int(r["params"]) > 1000 and r["image_size"] == "32"
    md = (out / "bench.md").read_text()
    assert "| model | device | precision |" in md
    if not torch.cuda.is_available():
        assert "cuda: not available on this machine" in md and "cuda: not available" in proc.stdout


def test_bench_bad_input_one_line(tmp_path):
    for args, message in (
        (["--precision", "fp8"], "choose from fp32"),
        (["--models", "resnet9000"], "unknown model"),
        (["--devices", "tpu"], "choose from cpu"),
    ):
        proc = run_cli("bench", *args, "--out", str(tmp_path / "b"))
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr


def test_bench_times_a_recipe_as_its_config_builds_it(tmp_path):
    """`--config` (repeatable): the recipe's model, batch, size, channels, classes and freeze."""
    from cxrlab.config import RunConfig
    from cxrlab.experiments.bench import LIGHTNING_PRECISIONS
    from cxrlab.models.summary import summarize
    from cxrlab.runtime import resolve_precision

    frozen = RunConfig.load(ROOT / "configs" / "x32_cnn.yaml")
    frozen.model.freeze = "backbone"
    frozen.train.batch_size = 8
    frozen.train.precision = "32"
    frozen.save(tmp_path / "frozen_cnn.yaml")
    out = tmp_path / "bench"
    mlp = ROOT / "configs" / "x32_mlp.yaml"
    proc = run_cli(
        "bench", "--config", str(mlp), "--config", str(tmp_path / "frozen_cnn.yaml"),
        "--devices", "cpu", "--steps", "2", "--warmup", "1", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((out / "bench.csv").open()))
    assert [r["config"] for r in rows] == [str(mlp), str(tmp_path / "frozen_cnn.yaml")]  # no --models rows
    recipe = RunConfig.load(mlp)
    mlp_row, cnn_row = rows
    assert (mlp_row["model"], mlp_row["batch_size"], mlp_row["image_size"]) == ("mlp", "32", "32")
    assert mlp_row["precision"] == LIGHTNING_PRECISIONS[resolve_precision(recipe.train.precision, "cpu")]
    assert int(mlp_row["params"]) == int(mlp_row["trainable_params"]) == 353_254  # report 003, Task 1
    expected = summarize(frozen.model, len(frozen.data.classes), frozen.data.image_size, macs=False)
    cnn = (cnn_row["model"], cnn_row["freeze"], cnn_row["batch_size"])
    assert cnn == (frozen.model.name, "backbone", "8")
    assert (int(cnn_row["params"]), int(cnn_row["trainable_params"])) == (expected.total, expected.trainable)
    assert int(cnn_row["trainable_params"]) < int(cnn_row["params"]) and cnn_row["precision"] == "fp32"
    for r in rows:
        assert float(r["train_img_s"]) > 0 and float(r["infer_img_s"]) > 0
    md = (out / "bench.md").read_text()
    assert "| config | model | device | precision |" in md and f"| {mlp} | mlp | cpu |" in md
    assert "353,254 (353,254)" in md and f"| {mlp} | mlp |" in proc.stdout

    proc = run_cli("bench", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and "config file not found" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
