"""`cxr demo`: a real end-to-end run on the bundled PneumoniaMNIST in about a minute on 2 CPU cores.

PneumoniaMNIST is part of MedMNIST v2 (Yang et al., Scientific Data 2023), CC BY 4.0: 5,856
pediatric chest X-rays from Kermany et al. (2018) at 28×28, official train/val/test split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrlab.config import RunConfig
from cxrlab.data.bundled import bundled_pneumoniamnist


def demo_config(epochs: int = 8) -> RunConfig:
    """The demo's run: small CNN from scratch, 28×28 grayscale, official split."""
    cfg = RunConfig()
    cfg.task = "PneumoniaMNIST: pneumonia vs normal (demo)"
    cfg.data.path = str(bundled_pneumoniamnist())
    cfg.data.image_size = 28
    cfg.model.name = "small_cnn"
    cfg.model.head.dropout = 0.3
    cfg.train.epochs = epochs
    cfg.train.batch_size = 128
    cfg.train.lr = 2e-3
    cfg.train.early_stopping = 4
    return cfg


def run_demo(out: str | Path = "runs/demo", epochs: int = 8, progress: bool = True) -> dict[str, Any]:
    """Train the demo run into ``out`` (replacing an earlier demo run there)."""
    from cxrlab.pipeline.train import train

    return train(demo_config(epochs), out, overwrite=True, progress=progress)
