"""Shared fixtures: real datasets from ../shared/data (skipped with a reason when absent).

Under ``CXRLAB_REQUIRE_ALL=1`` (set by ``.ci/run``) a skip of any kind is a failure: a missing dataset,
weights file, browser, PostgreSQL server or optional package must never let CI go green untested."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
REQUIRE_ALL = os.environ.get("CXRLAB_REQUIRE_ALL", "") not in ("", "0")
WEIGHTS = SHARED / "weights" / "torch"
COVID = DATA / "covid-challenge"
KERMANY = DATA / "kermany-224"
PNEUMONIAMNIST = DATA / "pneumoniamnist" / "pneumoniamnist.npz"


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(
            f"{what} not found at {path}: clone cxrlab beside a `shared/` folder holding the datasets "
            "(see shared/data/README.md); CI always has it"
        )
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With CXRLAB_REQUIRE_ALL set, turn every skip into a failure that keeps the skip's reason."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CXRLAB_REQUIRE_ALL=1 (a prerequisite is missing): {reason}"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests share one image cache (CI may point CXRLAB_CACHE_DIR at a persistent one)."""
    if not os.environ.get("CXRLAB_CACHE_DIR"):
        os.environ["CXRLAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("cxrlab-cache"))
    os.environ.setdefault("TORCH_HOME", str(WEIGHTS))
    yield


@pytest.fixture(scope="session")
def covid_dir() -> Path:
    return _need(COVID, "covid-challenge dataset")


@pytest.fixture(scope="session")
def kermany_dir() -> Path:
    return _need(KERMANY, "kermany-224 dataset")


@pytest.fixture(scope="session")
def pneumoniamnist_npz() -> Path:
    return _need(PNEUMONIAMNIST, "pneumoniamnist.npz")


@pytest.fixture(scope="session")
def torch_home() -> Path:
    return _need(
        WEIGHTS / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth", "MobileNetV2 ImageNet weights"
    )


@pytest.fixture()
def small_covid(tmp_path, covid_dir) -> Path:
    """A tiny copy of covid-challenge (real images): train 12/class, test 6/class, covid + normal."""
    root = tmp_path / "covid-small"
    for split, n in (("train", 12), ("test", 6)):
        for cls in ("covid", "normal"):
            dst = root / split / cls
            dst.mkdir(parents=True)
            for f in sorted((covid_dir / split / cls).iterdir())[:n]:
                shutil.copy(f, dst / f.name)
    return root


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600, check: bool = False
) -> subprocess.CompletedProcess:
    """Run the real `cxr` entry point in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "cxrlab", *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"cxr {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc
