"""Time cxrlab.datasets.open and ds.images() (cold: an empty cache; warm: again) on the shared datasets.

Run from the repository root: ``.venv/bin/python scripts/bench_datasets.py`` (docs/datasets.md).
"""

from __future__ import annotations

import os
import tempfile
import time

os.environ["CXRLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="cxrlab-bench-datasets-")  # cold: an empty cache

import cxrlab.datasets as datasets  # noqa: E402 - after the cache is chosen; imports are not timed

D = "../shared/data"
CASES = [
    ("covid-challenge, size=224", lambda: datasets.open(f"{D}/covid-challenge", size=224)),
    ("pneumoniamnist.npz", lambda: datasets.open(f"{D}/pneumoniamnist/pneumoniamnist.npz")),
    ("nih-1000, preset nih, size=64", lambda: datasets.open(
        f"{D}/nih-1000/images", labels=f"{D}/nih-1000/labels.csv", preset="nih", size=64)),
    ("dicom/, size=224", lambda: datasets.open(f"{D}/dicom", size=224)),
]  # fmt: skip

for name, make in CASES:
    start = time.perf_counter()
    ds = make()
    opened = time.perf_counter() - start
    ds.metadata  # noqa: B018 - built once, not timed
    start = time.perf_counter()
    ds.images()
    cold = time.perf_counter() - start
    start = time.perf_counter()
    ds.images()
    warm = time.perf_counter() - start
    print(f"| {name} ({len(ds):,} images) | {opened:.2f} s | {cold:.2f} s / {warm:.2f} s |", flush=True)
