"""Two-process DDP on CPU (gloo) gives the metrics of one process, within a documented tolerance.

Tolerance (docs/experiments.md): test accuracy within 0.05, AUC within 0.02, test loss within 0.05.
With the whole training split in one batch per step, DDP's two half-batches average to the same
gradient as one process, so only floating-point summation order differs.
"""

from __future__ import annotations

import json

from tests.conftest import ROOT, run_cli
from tests.experiments.conftest import FROZEN_MNV2

# Shared by the one/two-process runs and the job scripts (which add --device, --devices, --num-nodes,
# --strategy, --quiet and --out themselves).
SCRIPT_ARGS = [
    "--classes",
    "covid,normal",
    "--max-per-class",
    "16",
    "--image-size",
    "96",
    *FROZEN_MNV2,
    "--set",
    "eval.tsne=false",
    "--set",
    "eval.bootstrap=100",
]
ARGS = [
    *SCRIPT_ARGS,
    "--epochs",
    "6",
    "--early-stopping",
    "100",
    "--device",
    "cpu",
    "--batch-size",
    "32",
    "-q",
]


def test_two_process_ddp_matches_one_process(covid_dir, torch_home, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = run_cli("train", "--data", str(covid_dir), *ARGS, "--devices", "1", "--out", str(one))
    assert p1.returncode == 0, p1.stderr
    p2 = run_cli(
        "train", "--data", str(covid_dir), *ARGS, "--devices", "2", "--strategy", "ddp", "--out", str(two)
    )
    assert p2.returncode == 0, p2.stderr
    assert p2.stdout.count("test accuracy") == 1  # only rank 0 reports
    a = json.loads((one / "metrics.json").read_text())["test"]
    b = json.loads((two / "metrics.json").read_text())["test"]
    assert a["n"] == b["n"]
    assert abs(a["accuracy"] - b["accuracy"]) <= 0.05
    assert abs(a["auc"] - b["auc"]) <= 0.02
    assert abs(a["loss"] - b["loss"]) <= 0.05
    cfg = (two / "config.yaml").read_text()
    assert "strategy: ddp" in cfg and "devices: '2'" in cfg
    h1 = (one / "history.csv").read_text().splitlines()
    h2 = (two / "history.csv").read_text().splitlines()
    assert len(h1) == len(h2) == 7  # one writer: no duplicated or interleaved rows


SRUN = """#!/bin/bash
# srun for one node, as SLURM runs it: SLURM_NTASKS copies of the command, all at once, each with
# its task variables. (No scheduler runs here; Lightning's SLURMEnvironment reads these.)
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NODEID=0 "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""


def _run_script(script, env, covid_dir, out):
    import os
    import subprocess

    full = {**os.environ, "DEVICE": "cpu", "OUT": str(out), **env}
    return subprocess.run(
        [
            "bash",
            str(ROOT / "examples" / "cluster" / script),
            "--data",
            str(covid_dir),
            *SCRIPT_ARGS,
            "--epochs",
            "3",
        ],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_sge_script_runs_two_process_ddp(covid_dir, torch_home, tmp_path):
    out = tmp_path / "sge"
    proc = _run_script("train_sge.qsub", {"GPUS": "2"}, covid_dir, out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("test accuracy") == 1
    assert json.loads((out / "metrics.json").read_text())["test"]["n"] == 32
    assert "strategy: ddp" in (out / "config.yaml").read_text()


def test_slurm_script_with_tasks_started_together(covid_dir, torch_home, tmp_path):
    import os

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text(SRUN)
    (fake_bin / "srun").chmod(0o755)
    out = tmp_path / "slurm"
    env = {
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NNODES": "1",
        "SLURM_JOB_NAME": "cxr-test",
        "SLURM_JOB_ID": str(20000 + os.getpid() % 20000),
        "SLURM_NODELIST": "localhost",
        "SLURM_SUBMIT_DIR": str(ROOT),
    }
    proc = _run_script("train_slurm.sbatch", env, covid_dir, out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("test accuracy") == 1  # rank 1 trained but did not evaluate or write
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    assert len((out / "history.csv").read_text().splitlines()) == 4
