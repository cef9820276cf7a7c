"""The orchestration layer: whole commands assembled from the layers below.

- :func:`train` — run folder → data → fit → evaluate → audit → report (:mod:`cxrlab.pipeline.train`)
- :func:`train_seeds` — the same run under several seeds, with the spread (:mod:`cxrlab.pipeline.seeds`)
- :func:`evaluate_run` — a finished run scored again, or on external data (:mod:`cxrlab.pipeline.evaluate`)
"""

from cxrlab.pipeline.evaluate import evaluate_run
from cxrlab.pipeline.seeds import train_seeds
from cxrlab.pipeline.train import train

__all__ = ["evaluate_run", "train", "train_seeds"]
