"""Real runs shared by the experiment tests: two on one test set (covid vs normal), one on another."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli

COMMON = ["--max-per-class", "12", "--image-size", "96", "-q", "--set", "eval.bootstrap=200"]


@pytest.fixture(scope="session")
def runs(tmp_path_factory, covid_dir, torch_home) -> dict[str, Path]:
    """mnv2 (frozen, fast path) and cnn (small CNN, full training) share a test set; other does not."""
    root = tmp_path_factory.mktemp("experiment-runs")
    specs = {
        "mnv2": [
            "--classes",
            "covid,normal",
            "--model",
            "mobilenet_v2",
            "--pretrained",
            "--freeze",
            "backbone",
            "--epochs",
            "3",
        ],
        "cnn": ["--classes", "covid,normal", "--model", "small_cnn", "--epochs", "2", "--batch-size", "8"],
        "other": [
            "--classes",
            "covid,pneumonia_vir",
            "--model",
            "mobilenet_v2",
            "--pretrained",
            "--freeze",
            "backbone",
            "--epochs",
            "2",
        ],
    }
    out = {}
    for name, args in specs.items():
        out[name] = root / name
        run_cli("train", "--data", str(covid_dir), *args, *COMMON, "--out", str(out[name]), check=True)
    return out
