"""Two CPU DDP processes read disjoint shards of the memory-mapped store that `cxr prepare` built once,
and the run equals the single-process run within docs/experiments.md's tolerance (test accuracy within
0.05, AUC within 0.02, loss within 0.05).

The fast path is off (``train.fast_path=false``) so that every epoch reads pixels from the store through
the DataLoader; ``CXRLAB_TRACE_ROWS`` makes each process append the (store, row) pairs it reads.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path

from tests.conftest import run_cli
from tests.experiments.test_ddp import ARGS

NO_FAST_PATH = [*ARGS, "--epochs", "3", "--set", "train.fast_path=false"]


def _reads(folder: Path) -> list[dict[str, list[int]]]:
    """One {store name: rows in reading order} per process that read the store."""
    out = []
    for f in sorted(folder.glob("rows-*.txt")):
        by_store: dict[str, list[int]] = defaultdict(list)
        for line in f.read_text().splitlines():
            name, row = line.split()
            by_store[name].append(int(row))
        out.append(by_store)
    return out


def test_ddp_ranks_read_disjoint_shards_of_a_prebuilt_store(covid_dir, torch_home, tmp_path):
    cache = tmp_path / "cache"
    env = {"CXRLAB_CACHE_DIR": str(cache)}
    prep = run_cli("prepare", "--data", str(covid_dir), *NO_FAST_PATH, env=env)
    assert prep.returncode == 0, prep.stderr
    found = re.findall(r"^(\w+): (\d+) images, .* → (\S+)$", prep.stdout, re.M)
    stores = {split: (int(n), Path(path)) for split, n, path in found}
    assert set(stores) == {"train", "val", "test"}, prep.stdout
    built = {split: path.stat().st_mtime_ns for split, (_, path) in stores.items()}

    one, two = tmp_path / "one", tmp_path / "two"
    trace1, trace2 = tmp_path / "trace1", tmp_path / "trace2"
    trace1.mkdir()
    trace2.mkdir()
    p1 = run_cli("train", "--data", str(covid_dir), *NO_FAST_PATH, "--devices", "1", "--out", str(one),
                 env={**env, "CXRLAB_TRACE_ROWS": str(trace1)})  # fmt: skip
    assert p1.returncode == 0, p1.stderr
    p2 = run_cli("train", "--data", str(covid_dir), *NO_FAST_PATH, "--devices", "2", "--strategy", "ddp",
                 "--out", str(two), env={**env, "CXRLAB_TRACE_ROWS": str(trace2)})  # fmt: skip
    assert p2.returncode == 0, p2.stderr
    # nobody decoded again: the stores `cxr prepare` wrote are the ones read
    assert {split: path.stat().st_mtime_ns for split, (_, path) in stores.items()} == built

    n_train, train_store = stores["train"][0], stores["train"][1].stem
    (single,) = _reads(trace1)
    assert sorted(single[train_store][:n_train]) == list(range(n_train))  # one process reads every row
    ranks = _reads(trace2)
    assert len(ranks) == 2 and all(set(r) <= {stores[s][1].stem for s in stores} for r in ranks)
    shard = math.ceil(n_train / 2)  # DistributedSampler: ceil(n / ranks) rows each, padded by repeats
    epochs = [len(r[train_store]) // shard for r in ranks]
    assert epochs[0] == epochs[1] == 3 and all(len(r[train_store]) == 3 * shard for r in ranks)
    for e in range(3):
        a, b = (set(r[train_store][e * shard : (e + 1) * shard]) for r in ranks)
        assert len(a) == len(b) == shard and a | b == set(range(n_train))  # each epoch: the whole split
        assert len(a & b) == 2 * shard - n_train  # …in disjoint shards (but for the padding)

    a = json.loads((one / "metrics.json").read_text())["test"]
    b = json.loads((two / "metrics.json").read_text())["test"]
    assert a["n"] == b["n"] == stores["test"][0]
    assert abs(a["accuracy"] - b["accuracy"]) <= 0.05
    assert abs(a["auc"] - b["auc"]) <= 0.02
    assert abs(a["loss"] - b["loss"]) <= 0.05
