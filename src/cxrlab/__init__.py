"""cxrlab: train, compare and explain chest X-ray classifiers — honestly, on a laptop CPU.

The Python API mirrors the CLI::

    from cxrlab import RunConfig, train, evaluate_run, predict
    cfg = RunConfig.load("configs/covid_binary_mobilenet.yaml")
    cfg.data.path = "../shared/data/covid-challenge"
    metrics = train(cfg, "runs/covid")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cxrlab.config import RunConfig

__version__ = "0.1.0"
__all__ = ["RunConfig", "train", "evaluate_run", "predict", "load_run", "__version__"]

if TYPE_CHECKING:
    from cxrlab.evaluation.run_eval import evaluate_run, load_run, predict
    from cxrlab.training.train import train


def __getattr__(name: str) -> Any:
    # Heavy imports (torch, Lightning) only when used, so `cxr --help` stays fast.
    if name == "train":
        from cxrlab.training.train import train

        return train
    if name in ("evaluate_run", "predict", "load_run"):
        from cxrlab.evaluation import run_eval

        return getattr(run_eval, name)
    raise AttributeError(name)
