"""cxrlab: train, compare and explain chest X-ray classifiers — honestly, on a laptop CPU.

The Python API mirrors the CLI::

    from cxrlab import RunConfig, datasets, train, evaluate_run, predict
    cfg = RunConfig.load("configs/fast_covid4.yaml")  # a recipe, as `cxr train --config` takes it
    cfg.data.path = "../shared/data/covid-challenge"
    metrics = train(cfg, "runs/covid")
    ds = datasets.open("../shared/data/covid-challenge")  # a torch Dataset; ds.metadata, a table
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cxrlab._version import __version__
from cxrlab.config import RunConfig

__all__ = [
    "RunConfig", "train", "train_seeds", "evaluate_run", "predict", "load_run", "datasets", "__version__",
]  # fmt: skip

if TYPE_CHECKING:
    from cxrlab import datasets
    from cxrlab.evaluation.inference import load_run, predict
    from cxrlab.pipeline import evaluate_run, train, train_seeds


def __getattr__(name: str) -> Any:
    # Heavy imports (torch, Lightning) only when used, so `cxr --help` stays fast.
    if name in ("train", "train_seeds", "evaluate_run"):
        from cxrlab import pipeline

        return getattr(pipeline, name)
    if name in ("predict", "load_run"):
        from cxrlab.evaluation import inference

        return getattr(inference, name)
    if name == "datasets":  # cxrlab.datasets.open(PATH, …): a torch Dataset with a metadata table
        import importlib

        return importlib.import_module("cxrlab.datasets")
    raise AttributeError(name)
