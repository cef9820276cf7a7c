"""Real runs and configs shared by the experiment tests (covid-challenge, small subsets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrlab.config import RunConfig
from tests.conftest import run_cli

COMMON = ["--max-per-class", "12", "--image-size", "96", "-q", "--set", "eval.bootstrap=200"]
FROZEN_MNV2 = ["--model", "mobilenet_v2", "--pretrained", "--freeze", "backbone"]


@pytest.fixture(scope="session")
def runs(tmp_path_factory, covid_dir, torch_home) -> dict[str, Path]:
    """mnv2 (frozen, fast path) and cnn (small CNN, full training) share a test set; other does not."""
    root = tmp_path_factory.mktemp("experiment-runs")
    specs = {
        "mnv2": ["--classes", "covid,normal", *FROZEN_MNV2, "--epochs", "3"],
        "cnn": ["--classes", "covid,normal", "--model", "small_cnn", "--epochs", "2", "--batch-size", "8"],
        "other": ["--classes", "covid,pneumonia_vir", *FROZEN_MNV2, "--epochs", "2"],
    }
    out = {}
    for name, args in specs.items():
        out[name] = root / name
        run_cli("train", "--data", str(covid_dir), *args, *COMMON, "--out", str(out[name]), check=True)
    return out


@pytest.fixture()
def base_yaml(tmp_path, covid_dir, torch_home) -> Path:
    """A sweep base: frozen MobileNetV2 head on covid vs normal, 12 images per class and split."""
    cfg = RunConfig()
    cfg.data.path = str(covid_dir)
    cfg.data.classes = ["covid", "normal"]
    cfg.data.max_per_class = 12
    cfg.data.image_size = 96
    cfg.model.pretrained = True
    cfg.model.freeze = "backbone"
    cfg.train.epochs = 3
    cfg.eval.tsne = False
    cfg.eval.bootstrap = 100
    path = tmp_path / "base.yaml"
    cfg.save(path)
    return path
