"""Experiments across runs: compare finished runs, sweep hyperparameters, benchmark throughput.

``compare_runs(runs, out)`` → compare.csv/.md/.html with paired significance tests;
``run_sweep(base_cfg, params, out)`` → an Optuna study whose trials are ordinary run folders;
``run_bench(models, devices, precisions)`` → training and inference throughput per model and device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["compare_runs", "run_sweep", "run_bench"]

if TYPE_CHECKING:
    from cxrlab.experiments.bench import run_bench
    from cxrlab.experiments.compare import compare_runs
    from cxrlab.experiments.sweep import run_sweep


def __getattr__(name: str) -> Any:
    # Lazy: `cxr --help` must not import torch or Optuna.
    if name == "compare_runs":
        from cxrlab.experiments.compare import compare_runs

        return compare_runs
    if name == "run_sweep":
        from cxrlab.experiments.sweep import run_sweep

        return run_sweep
    if name == "run_bench":
        from cxrlab.experiments.bench import run_bench

        return run_bench
    raise AttributeError(name)
