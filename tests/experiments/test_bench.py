"""`cxr bench` measures real training and inference steps; absent devices are skipped and named."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from tests.conftest import run_cli


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
