"""The explain tests' shared run: one small real model trained once for test_explain.py and test_cam.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.trust.conftest import copy_subset

#: The report's CAM method of the shared run (not the default, so the setting is seen to take effect).
REPORT_METHOD = "gradcam++"


@pytest.fixture(scope="session")
def run(tmp_path_factory, covid_dir) -> Path:
    """small_cnn, 64 px, 1 epoch on 16 + 16 real covid-challenge images (covid vs normal), 4 + 4 test
    images; the report's gallery and lung score with ``eval.explain_method`` = :data:`REPORT_METHOD`."""
    root = tmp_path_factory.mktemp("explain")
    data = copy_subset(covid_dir, root / "data", {"train": 16, "test": 4}, ("covid", "normal"))
    out = root / "run"
    run_cli(
        "train", "--data", str(data), "--model", "small_cnn", "--image-size", "64", "--epochs", "1", "-q",
        "--no-tensorboard", "--set", "eval.tsne=false", "--set", "eval.bootstrap=50",
        "--set", f"eval.explain_method={REPORT_METHOD}", "--out", str(out),
        check=True,
    )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def images(run) -> list[Path]:
    test = run.parent / "data" / "test"
    return sorted((test / "covid").iterdir())[:2] + sorted((test / "normal").iterdir())[:2]
