"""`cxr demo`: a real end-to-end run on the bundled PneumoniaMNIST in under two minutes on 2 CPU cores.

PneumoniaMNIST is part of MedMNIST v2 (Yang et al., Scientific Data 2023), CC BY 4.0: 5,856
pediatric chest X-rays from Kermany et al. (2018) at 28×28, official train/val/test split.
The settings are the recipe ``configs/fast_pneumoniamnist.yaml`` (measured over 5 seeds against the
earlier demo settings in docs/benchmarks.md §12).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from cxrlab.config import MAX_EPOCHS, RunConfig, check_range
from cxrlab.data.bundled import bundled_pneumoniamnist

RECIPE = "fast_pneumoniamnist"


def demo_config(epochs: int | None = None) -> RunConfig:
    """The demo's run: the fast_pneumoniamnist recipe (small CNN from scratch, 28×28 grayscale, official
    split) on the bundled file; ``epochs`` overrides the recipe's."""
    check_range("--epochs", epochs, 1, MAX_EPOCHS, "a number of epochs")
    with resources.as_file(resources.files("cxrlab") / "recipes" / f"{RECIPE}.yaml") as path:
        cfg = RunConfig.load(path)
    cfg.task = "PneumoniaMNIST: pneumonia vs normal (demo)"
    cfg.data.path = str(bundled_pneumoniamnist())
    if epochs is not None:
        cfg.train.epochs = epochs
        if epochs < 3:
            # a 1–2 epoch demo is all warm-up, and the weight average (decay 0.99, 37 steps per epoch) would
            # still be mostly the random initial weights: plain AdamW + cosine then
            cfg.train.warmup_epochs = 0
            cfg.train.ema_decay = None
    return cfg


def run_demo(
    out: str | Path = "runs/demo", epochs: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train the demo run into ``out`` (replacing an earlier demo run there)."""
    from cxrlab.pipeline.train import train

    return train(demo_config(epochs), out, overwrite=True, progress=progress)
