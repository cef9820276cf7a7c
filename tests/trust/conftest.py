"""Fixtures for the trust tests: a small real dataset and one trained binary run, shared by all."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli


def copy_subset(src: Path, dst: Path, per_split: dict[str, int], classes: tuple[str, ...]) -> Path:
    """Copy the first N real images per split and class of a split-layout dataset."""
    for split, n in per_split.items():
        for cls in classes:
            out = dst / split / cls
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted((src / split / cls).iterdir())[:n]:
                shutil.copy(f, out / f.name)
    return dst


def one_line_error(proc, code: int = 2) -> str:
    """Assert the CLI failed with exactly one clean line on stderr, and return it."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(scope="session")
def covid_small(tmp_path_factory, covid_dir) -> Path:
    """covid-challenge covid + normal, train 16/class, test 8/class (real images)."""
    root = tmp_path_factory.mktemp("data") / "covid-small"
    return copy_subset(covid_dir, root, {"train": 16, "test": 8}, ("covid", "normal"))


@pytest.fixture(scope="session")
def binary_run(tmp_path_factory, covid_small, torch_home) -> Path:
    """A finished fast-path run (frozen ImageNet MobileNetV2) with a target-sensitivity threshold and
    temperature scaling."""
    out = tmp_path_factory.mktemp("runs") / "binary"
    run_cli(
        "train", "--data", str(covid_small), "--model", "mobilenet_v2", "--pretrained",
        "--freeze", "backbone", "--epochs", "8", "--target-sensitivity", "0.95", "--temperature-scaling",
        "--set", "eval.tsne=false", "--set", "eval.bootstrap=200", "--no-tensorboard",
        "--out", str(out), "-q", check=True,
    )  # fmt: skip
    return out
