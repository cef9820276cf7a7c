"""Fixtures for the trust tests: a small real dataset and one trained binary run, shared by all."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.conftest import REQUIRE_ALL, run_cli

HYPOTHESIS_SCALE = float(os.environ.get("CXRLAB_HYPOTHESIS_SCALE", "1"))


def hypothesis_settings(n: int, *health_checks: HealthCheck) -> settings:
    """The trust tests' hypothesis settings: ``n`` examples times ``CXRLAB_HYPOTHESIS_SCALE``, no deadline,
    the same cases on every CI run (local runs explore new ones), no example database."""
    return settings(
        max_examples=max(1, int(n * HYPOTHESIS_SCALE)),
        deadline=None,
        derandomize=REQUIRE_ALL,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, *health_checks],
    )


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
    """Assert the CLI failed with exactly one clean error line on stderr, and return it.

    The data audit's warnings (``warning: …``, one line each) print before training starts, so they may
    precede the error; nothing else may."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("warning: ")]
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


def png_classes(root: Path, n: int = 12, size: int = 32, classes: tuple[str, ...] = ("a", "b")) -> Path:
    """``classes`` x ``n`` random grey PNGs of ``size`` x ``size`` (the issue's ``d_base``)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in classes:
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture()
def d_base(tmp_path) -> Path:
    """2 classes x 12 PNGs of 32 x 32, in this test's tmp_path."""
    return png_classes(tmp_path / "d_base")


@pytest.fixture()
def small_fs(tmp_path):
    """Mount a size-limited tmpfs: ``small_fs(size_bytes) -> Path``; unmounted afterwards. Needs root (or
    CAP_SYS_ADMIN); skipped otherwise, which CXRLAB_REQUIRE_ALL=1 turns into a failure."""
    import subprocess

    mounted: list[Path] = []

    def mount(size: int, name: str = "fs") -> Path:
        point = tmp_path / name
        point.mkdir()
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except FileNotFoundError:
            pytest.skip("no `mount` command here: cannot make a small file system")
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)
