"""Index time and peak memory of the full NIH (112,120 rows) and CheXpert (223,414 rows) label files.

Run from the project root (each case in a fresh process, so peak RSS is that case's alone):

    .venv/bin/python scripts/bench_labels.py

Two measurements per file, the images being absent (``../shared/data/label-files`` has none):

* ``discover``: the real entry point, ``discover(IMAGE_ROOT, labels=...)``, up to its one-line error
  "none of the N rows … has its image" (reading, filters, one scandir of the folder, counting);
* ``parse``: ``read_labels(..., check_images=False)``, which takes every row as present, so labels,
  targets, patient groups and splits are built for all rows (what indexing costs once the images exist).
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ROOT.parent / "shared" / "data" / "label-files"
CASES = {"nih": "nih_Data_Entry_2017_v2020.csv.gz", "chexpert": "chexpert_train.csv.gz"}


def one(fmt: str, mode: str) -> dict:
    """One measurement in this process."""
    from cxrlab.config import LabelsConfig
    from cxrlab.data.index import discover
    from cxrlab.data.labels import read_labels
    from cxrlab.errors import DataError

    cfg = LabelsConfig(file=str(FILES / CASES[fmt]), format=fmt)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as empty:
        start = time.perf_counter()
        if mode == "discover":
            try:
                discover(empty, labels=cfg)
                outcome = "indexed"
            except DataError as exc:
                outcome = str(exc)[:60] + "…"
            rows = None
        else:
            read = read_labels(empty, cfg, check_images=False)
            rows, outcome = len(read.paths), f"{len(read.usable()):,} samples, {len(read.findings)} findings"
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"format": fmt, "mode": mode, "seconds": round(seconds, 2), "rows": rows,
            "peak_rss_mib": round(peak / 1024), "added_mib": round((peak - base) / 1024),
            "outcome": outcome}  # fmt: skip


def main() -> None:
    if len(sys.argv) == 3:
        print(json.dumps(one(sys.argv[1], sys.argv[2])))
        return
    info = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in info if "model name" in ln), platform.processor())
    avx2 = any("avx2" in ln for ln in info if ln.startswith("flags"))
    cpu += f", {sum(ln.startswith('processor') for ln in info)} vCPU" + (", AVX2" if avx2 else "")
    print(f"# label-file indexing · {cpu} · Python {platform.python_version()}\n")
    print("| file | rows | mode | seconds | peak RSS (MiB) | of which indexing (MiB) | outcome |")
    print("|---|---|---|---|---|---|---|")
    for fmt in CASES:
        for mode in ("discover", "parse"):
            cmd = [sys.executable, __file__, fmt, mode]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            total = {"nih": "112,120", "chexpert": "223,414"}[fmt]
            print(f"| {CASES[fmt]} | {total} | {mode} | {r['seconds']} | {r['peak_rss_mib']} | "
                  f"{r['added_mib']} | {r['outcome']} |")  # fmt: skip


if __name__ == "__main__":
    main()
