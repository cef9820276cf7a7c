"""One small trained run shared by the deploy tests (export, predict, serve): small_cnn, 64 px, 1 epoch,
covid-challenge covid vs normal (real images)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli

# train.precision stays auto (bf16-mixed on a CPU with native bf16): inference is fp32 whatever trained it
# (eval.precision: 32): the exported fp32 graphs match `cxr predict` and `cxr serve` to 1e-4 (test_precision)
TRAIN_ARGS = ("--classes", "covid,normal", "--model", "small_cnn", "--image-size", "64", "--epochs", "1",
              "-q", "--no-tensorboard", "--set", "eval.tsne=false", "--set", "eval.bootstrap=50")  # fmt: skip


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, covid_dir) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "run"
    run_cli("train", "--data", str(covid_dir), *TRAIN_ARGS, "--out", str(out), check=True)
    return out


@pytest.fixture(scope="session")
def test_images(covid_dir) -> list[Path]:
    """Real test images of both classes, interleaved."""
    covid = sorted((covid_dir / "test" / "covid").iterdir())
    normal = sorted((covid_dir / "test" / "normal").iterdir())
    return [p for pair in zip(covid, normal, strict=False) for p in pair]
