"""Ctrl-C during `cxr train` keeps a readable run folder; `cxr train --resume RUN` then ends with the
same metrics as an uninterrupted run with the same seed (real SIGINT to a real training process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cxrlab.config import RunConfig
from cxrlab.runs import read_csv
from tests.conftest import run_cli
from tests.trust.conftest import one_line_error

COMMON = ("--no-tensorboard", "--set", "eval.tsne=false", "--set", "eval.bootstrap=200", "-q")
CASES = {
    # full training with augmentation and dropout: shuffling, augmentation and dropout draws must all
    # be the same after resuming
    "full": ("--model", "small_cnn", "--image-size", "48", "--augment", "--epochs", "8", "--batch-size", "4"),
    # the frozen-backbone fast path (cached features, only the head trains), with early stopping state
    "fast": ("--model", "mobilenet_v2", "--pretrained", "--freeze", "backbone", "--epochs", "14",
             "--batch-size", "2", "--early-stopping", "6"),
}  # fmt: skip


def _default_sigint() -> None:
    """In the child, before exec: Ctrl-C gets its default meaning even when this pytest process ignores
    SIGINT (an ignored signal is inherited across exec, and Python then leaves it ignored — as after an
    in-process Lightning run that was interrupted, which sets SIG_IGN and never restores it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_cxr(args: list[str]) -> subprocess.Popen:
    """`python -m cxrlab ARGS` as a child process that reacts to SIGINT like a terminal's Ctrl-C."""
    return subprocess.Popen(
        [sys.executable, "-m", "cxrlab", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
        preexec_fn=_default_sigint,
    )


def interrupt_after(args: list[str], out: Path, epochs: int = 2, timeout: float = 600):
    """Start `cxr train`, send SIGINT (Ctrl-C) once history.csv holds ``epochs`` rows."""
    proc = start_cxr(["train", *args, "--out", str(out)])
    deadline = time.monotonic() + timeout
    history = out / "history.csv"
    while proc.poll() is None and time.monotonic() < deadline:
        if history.is_file() and len(read_csv(history)) >= epochs:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _history(run: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_csv(run / "history.csv")]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_ctrl_c_then_resume_gives_the_uninterrupted_metrics(case, covid_small, torch_home, tmp_path):
    args = ["--data", str(covid_small), *CASES[case], *COMMON]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run_cli("train", *args, "--out", str(straight), check=True)

    proc = interrupt_after(args, stopped)
    assert proc.returncode == 130, f"not interrupted (finished before the signal?): {proc.stderr}"
    line = one_line_error(proc, code=130)
    assert f"--resume {stopped}" in line
    # the interrupted folder is readable: status, complete config, history so far, a safe checkpoint
    status = json.loads((stopped / "status.json").read_text())
    assert status["status"] == "interrupted" and status["epochs_done"] >= 1
    assert RunConfig.load(stopped / "config.yaml").train.seed == 0
    done = _history(stopped)
    assert len(done) >= 2
    assert done == _history(straight)[: len(done)]
    ckpt = torch.load(stopped / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # last.ckpt is written right after each epoch's history row: it holds the last epoch, or the one
    # before when Ctrl-C fell between the two writes (that epoch is then simply run again)
    assert ckpt["epoch"] + 1 in (len(done), len(done) - 1)
    assert not (stopped / "metrics.json").exists()

    proc = run_cli("train", "--resume", str(stopped), "-q")
    assert proc.returncode == 0, proc.stderr
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((stopped / "metrics.json").read_text())
    assert _history(stopped) == _history(straight)
    assert b["test"] == a["test"]  # every metric, CI and the confusion matrix, to the last digit
    assert b["val"] == a["val"] and b["calibration"] == a["calibration"]
    assert json.loads((stopped / "status.json").read_text())["status"] == "finished"


def test_resume_before_the_first_checkpoint_is_one_line(tmp_path, covid_small):
    run = tmp_path / "run"
    run.mkdir()
    RunConfig.model_validate({"data": {"path": str(covid_small)}, "model": {"name": "small_cnn"}}).save(
        run / "config.yaml"
    )
    line = one_line_error(run_cli("train", "--resume", str(run)))
    assert "no checkpoints/last.ckpt" in line


def test_resume_of_a_folder_that_is_not_a_run(tmp_path):
    line = one_line_error(run_cli("train", "--resume", str(tmp_path)))
    assert "not a run folder" in line


@pytest.mark.slow
def test_ctrl_c_during_evaluation_then_resume_finishes_the_run(covid_small, tmp_path):
    # SIGINT once the model file exists: training is over, the plots and the report are still being made
    run = tmp_path / "run"
    args = ["train", "--data", str(covid_small), "--model", "small_cnn", "--image-size", "48",
            "--epochs", "2", "--no-tensorboard", "-q", "--out", str(run)]  # fmt: skip
    proc = start_cxr(args)
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if (run / "model.json").is_file():
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.01)
    stdout, stderr = proc.communicate(timeout=600)
    if proc.returncode == 0:
        pytest.skip("evaluation finished before the signal arrived (machine too fast for this window)")
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    line = one_line_error(done, code=130)
    assert "during evaluation" in line and f"--resume {run}" in line
    assert json.loads((run / "status.json").read_text()) == {"status": "interrupted", "stage": "evaluation"}
    assert not (run / "metrics.json").exists()

    proc = run_cli("train", "--resume", str(run), "-q")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["timing"]["epochs"] == 2 and (run / "report.html").is_file()
