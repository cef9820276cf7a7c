"""Peak RSS and time of multilabel_metrics at NIH ChestX-ray14's official test size (25,596 images x 14
findings, patients of 3 images, synthetic scores): `python scripts/multilabel_bootstrap_memory.py 1000`
(docs/benchmarks.md §11.5)."""

import resource
import sys
import time

import numpy as np

from cxrlab.evaluation.multilabel import multilabel_metrics

n, k = 25596, 14
rng = np.random.default_rng(0)
targets = (rng.random((n, k)) < 0.08).astype(np.float64)
probs = np.clip(targets * 0.3 + rng.random((n, k)) * 0.7, 0, 1)
groups = [str(i // 3) for i in range(n)]
t = time.perf_counter()
findings = [f"f{j}" for j in range(k)]
thresholds = {f: {"threshold": 0.5} for f in findings}
m = multilabel_metrics(targets, probs, findings, thresholds, groups, n_boot=int(sys.argv[1]))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
print(f"{time.perf_counter() - t:.1f} s, peak RSS {peak:.2f} GB, micro AUC CI {m['micro_auc_ci95']}")
