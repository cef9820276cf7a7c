"""The run folder is safe and its status.json is truthful (issue 10).

`--overwrite` deletes only what cxrlab wrote (a marked run folder holding nothing else) and never the data,
the config file's folder or the current folder; one process writes a run folder at a time (advisory lock);
whatever ends a run — Ctrl-C while decoding, SIGTERM, kill -9, a full disk, a diverging loss — leaves
status.json saying so, or removes a folder in which nothing was trained. Real signals to real processes
and a real size-limited file system (tmpfs)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cxrlab.errors import CxrError
from cxrlab.runs import LOCK, RunInUse, read_csv, read_status, run_lock
from tests.conftest import run_cli
from tests.trust.conftest import one_line_error
from tests.trust.test_resume import start_cxr

FAST = ("--no-tensorboard", "--set", "eval.tsne=false", "--set", "eval.bootstrap=50")
B = ("train", "--model", "small_cnn", "-q", "--epochs", "1", "--image-size", "32", *FAST)
HOST = socket.gethostname()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (except cxrlab's lock file) with a hash of its content."""
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
        if p.name != LOCK
    }


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Poll until ``predicate()`` or the process ends (no timing assertion: the caller checks the state)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and not predicate():
        time.sleep(0.02)


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def history_rows(run: Path) -> int:
    return len(read_csv(run / "history.csv")) if (run / "history.csv").is_file() else 0


def status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


# --------------------------------------------------------------------------- --overwrite


def test_overwrite_never_deletes_the_data_folder(tmp_path, d_base):
    # the case: data, config and --out are one folder; all images were deleted
    dcopy = shutil.copytree(d_base, tmp_path / "dcopy")
    (dcopy / "config.yaml").write_text("train:\n  epochs: 1\n")
    before = snapshot(dcopy)
    proc = run_cli(*B, "--config", str(dcopy / "config.yaml"), "--data", str(dcopy), "--out", str(dcopy),
                   "--overwrite")  # fmt: skip
    line = one_line_error(proc)
    assert f"--out {dcopy} is inside the input folder {dcopy}" in line
    assert snapshot(dcopy) == before
    # --out a parent of the data folder: --overwrite refuses to delete what this command reads
    parent = tmp_path / "project"
    shutil.copytree(d_base, parent / "data")
    (parent / "notes.txt").write_text("keep me")
    before = snapshot(parent)
    proc = run_cli(*B, "--data", str(parent / "data"), "--out", str(parent), "--overwrite")
    line = one_line_error(proc)
    assert f"refusing to delete {parent} with --overwrite" in line and "which this command reads" in line
    assert snapshot(parent) == before


def test_overwrite_never_deletes_the_current_folder(tmp_path, d_base):
    # `--out . --overwrite` in a project folder erased data/ and the notes
    project = tmp_path / "project"
    shutil.copytree(d_base, project / "data")
    (project / "notes.txt").write_text("my notes")
    (project / "config.yaml").write_text("train:\n  epochs: 1\n")
    before = snapshot(project)
    proc = subprocess.run(
        [sys.executable, "-m", "cxrlab", *B, "--data", "data", "--out", ".", "--overwrite"],
        cwd=project, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    line = one_line_error(proc)
    assert "refusing to delete . with --overwrite: it is (or holds) the current folder" in line
    assert snapshot(project) == before


def test_overwrite_never_deletes_a_folder_holding_the_current_folder(tmp_path, d_base):
    # `--out .. --overwrite` from inside a run folder (here its plots/): a run folder cxrlab wrote, holding
    # nothing but its own entries, is replaceable, yet deleting it would pull the current folder away
    run = tmp_path / "run"
    run_cli(*B, "--data", str(d_base), "--out", str(run), check=True)
    before = snapshot(run)
    proc = subprocess.run(
        [sys.executable, "-m", "cxrlab", *B, "--data", str(d_base), "--out", "..", "--overwrite"],
        cwd=run / "plots", capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    line = one_line_error(proc)
    assert "refusing to delete .. with --overwrite: it is (or holds) the current folder" in line
    assert snapshot(run) == before


def test_overwrite_replaces_only_a_run_folder_cxrlab_wrote(tmp_path, d_base):
    run = tmp_path / "run"
    run_cli(*B, "--data", str(d_base), "--out", str(run), check=True)
    marker = json.loads((run / ".cxrlab-run").read_text())
    assert marker["kind"] == "train" and marker["version"] and marker["created"]

    # our own run is replaced
    (run / "metrics.json").write_text("stale")
    run_cli(*B, "--data", str(d_base), "--out", str(run), "--overwrite", check=True)
    assert json.loads((run / "metrics.json").read_text())["test"]["n"] > 0
    assert status(run)["status"] == "finished"

    # a file the user put there stops it, and nothing at all is deleted
    (run / "notes.txt").write_text("mine")
    before = snapshot(run)
    line = one_line_error(run_cli(*B, "--data", str(d_base), "--out", str(run), "--overwrite"))
    assert "holds files cxrlab did not write (notes.txt)" in line
    assert snapshot(run) == before
    (run / "notes.txt").unlink()

    # nor a run whose config file this command reads (`--config RUN/config.yaml --out RUN`)
    before = snapshot(run)
    line = one_line_error(run_cli(*B, "--config", str(run / "config.yaml"), "--out", str(run), "--overwrite"))
    assert "which this command reads" in line and snapshot(run) == before

    # a folder without cxrlab's marker (not written by this cxrlab) is refused too
    (run / ".cxrlab-run").unlink()
    before = snapshot(run)
    line = one_line_error(run_cli(*B, "--data", str(d_base), "--out", str(run), "--overwrite"))
    assert "no .cxrlab-run marker" in line and snapshot(run) == before


def test_generative_folders_use_the_same_guard(tmp_path, d_base):
    from cxrlab.generative.common import prepare_folder
    from cxrlab.runs import protect

    # through the CLI: the data folder as the autoencoder's --out is refused before any work
    before = snapshot(d_base)
    proc = run_cli("autoencoder", "train", "--data", str(d_base), "--out", str(d_base), "--overwrite",
                   "--image-size", "32", "--epochs", "1", "-q")  # fmt: skip
    assert "refusing to delete" in one_line_error(proc) and snapshot(d_base) == before

    # a folder it made is replaced; a GAN folder is not an autoencoder folder; foreign files stop it
    gan = prepare_folder(tmp_path / "gan", "gan.json", False, "a GAN folder")
    (gan / "gan.json").write_text("{}")
    (gan / "samples").mkdir()
    (gan / "samples" / "epoch_001.png").write_bytes(b"png")
    with pytest.raises(CxrError, match="it is a 'gan' folder, not an autoencoder folder"):
        prepare_folder(gan, "autoencoder.json", True, "an autoencoder folder")
    prepare_folder(gan, "gan.json", True, "a GAN folder")
    assert sorted(p.name for p in gan.iterdir()) == [".cxrlab-lock", ".cxrlab-run"]
    (gan / "gan.json").write_text("{}")
    (gan / "todo.txt").write_text("mine")
    with pytest.raises(CxrError, match=r"holds files cxrlab did not write \(todo.txt\)"):
        prepare_folder(gan, "gan.json", True, "a GAN folder")
    assert (gan / "todo.txt").read_text() == "mine" and (gan / "gan.json").is_file()
    (gan / "todo.txt").unlink()
    # ... nor a folder holding the data being read
    (gan / "samples").mkdir()
    protect(gan / "samples")
    with pytest.raises(CxrError, match="which this command reads"):
        prepare_folder(gan, "gan.json", True, "a GAN folder")
    assert (gan / "samples").is_dir()


@pytest.mark.parametrize("target", ["file", "/dev/null"])
def test_out_that_is_a_file_is_one_line(tmp_path, d_base, target):
    out = tmp_path / "results.txt" if target == "file" else Path(target)
    if target == "file":
        out.write_text("keep me")
    line = one_line_error(run_cli(*B, "--data", str(d_base), "--out", str(out)))
    assert f"{out} is a file, not a folder; --out takes a folder" in line
    if target == "file":
        assert out.read_text() == "keep me"


# --------------------------------------------------------------------------- one writer at a time


def test_a_second_writer_stops_at_once_and_sigterm_keeps_a_resumable_run(tmp_path, d_base):
    run = tmp_path / "run"
    long = ["train", "--model", "small_cnn", "-q", "--image-size", "32", *FAST, "--epochs", "5000",
            "--early-stopping", "5000", "--data", str(d_base), "--out", str(run)]  # fmt: skip
    proc = start_cxr(long)
    try:
        wait_for(lambda: history_rows(run) >= 1, proc)
        assert proc.poll() is None, finish(proc).stderr
        running = status(run)
        assert running["status"] == "running" and running["pid"] == proc.pid and running["host"] == HOST
        assert running["started"]
        config = (run / "config.yaml").read_text()
        in_use = f"{run} is in use by another cxr process (pid {proc.pid} on {HOST})"
        for args in (
            [*B, "--data", str(d_base), "--out", str(run)],
            [*B, "--data", str(d_base), "--out", str(run), "--overwrite"],
            ["train", "--resume", str(run), "-q"],
            ["evaluate", str(run)],
        ):
            line = one_line_error(run_cli(*args))
            assert in_use in line, (args, line)
        assert (run / "config.yaml").read_text() == config  # the running process's folder, untouched
        proc.send_signal(signal.SIGTERM)
        done = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    line = one_line_error(done, code=143)
    assert "terminated (SIGTERM)" in line and f"cxr train --resume {run}" in line
    final = status(run)
    assert final["status"] == "interrupted" and final["epochs_done"] >= 1
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] + 1 >= 1


def test_lock_names_the_holder_and_is_released_when_it_dies(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from cxrlab.runs import run_lock; "
         f"lock = run_lock({str(folder)!r}); print('locked', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUse, match=f"in use by another cxr process \\(pid {holder.pid} on "):
            run_lock(folder)
    finally:
        holder.kill()
        holder.wait()
    with run_lock(folder):  # kill -9 released it
        pass


# --------------------------------------------------------------------------- truthful status


def test_kill_9_is_detected_as_stale_and_resume_finishes(tmp_path, d_base):
    run = tmp_path / "run"
    proc = start_cxr([*B[:5], "3", *B[6:], "--data", str(d_base), "--out", str(run)])
    wait_for(lambda: (run / "checkpoints" / "last.ckpt").is_file(), proc)  # epoch 1 saved
    proc.send_signal(signal.SIGKILL)
    finish(proc)
    assert proc.returncode == -signal.SIGKILL, "finished before kill -9"
    left = (run / "status.json").read_text()
    stale = json.loads(left)
    assert stale["status"] == "running" and stale["pid"] == proc.pid  # what kill -9 leaves behind
    reason = f"process {proc.pid} ended without updating status"
    assert read_status(run) == {"status": "interrupted", "reason": reason, "stale": stale}

    # the next command that takes the run's lock records it
    one_line_error(run_cli("evaluate", str(run)))  # no model yet: one line
    assert status(run) == {"status": "interrupted", "reason": reason}
    (run / "status.json").write_text(left)  # the same stale record: --resume says so, records it, resumes
    done = run_cli("train", "--resume", str(run), "-q")
    assert done.returncode == 0, done.stderr
    assert f"warning: {run} was interrupted ({reason}); resuming it" in done.stderr
    assert status(run)["status"] == "finished" and history_rows(run) == 3


def test_stale_running_status_from_a_dead_pid(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK).write_text("")  # an old lock file nobody holds
    (tmp_path / "status.json").write_text(json.dumps({"status": "running", "pid": dead.pid, "host": HOST}))
    assert read_status(tmp_path)["reason"] == f"process {dead.pid} ended without updating status"
    # this process, still alive, is not stale
    (tmp_path / "status.json").write_text(json.dumps({"status": "running", "pid": os.getpid(), "host": HOST}))
    assert read_status(tmp_path)["status"] == "running"


def test_sigterm_then_resume_gives_a_finished_run(tmp_path, d_base):
    run = tmp_path / "run"
    proc = start_cxr([*B[:5], "3", *B[6:], "--data", str(d_base), "--out", str(run)])
    wait_for(lambda: (run / "checkpoints" / "last.ckpt").is_file(), proc)  # epoch 1 saved
    proc.send_signal(signal.SIGTERM)
    done = finish(proc)
    line = one_line_error(done, code=143)
    assert f"the run folder {run} is kept: continue with `cxr train --resume {run}`" in line
    assert status(run)["status"] == "interrupted"
    proc = run_cli("train", "--resume", str(run), "-q")
    assert proc.returncode == 0, proc.stderr
    assert status(run)["status"] == "finished" and history_rows(run) == 3


def test_ctrl_c_while_decoding_removes_the_new_folder(tmp_path):
    # decoding takes seconds: 80 large (3000 x 3000, 15 kB) PNGs, a cold cache
    import numpy as np
    from PIL import Image

    big = tmp_path / "big.png"
    Image.fromarray((np.add.outer(np.arange(3000), np.arange(3000)) % 256).astype(np.uint8)).save(big)
    data = tmp_path / "big"
    for cls in ("a", "b"):
        (data / cls).mkdir(parents=True)
        for i in range(40):
            shutil.copy(big, data / cls / f"{i}.png")
    run = tmp_path / "run"
    args = [*B, "--data", str(data), "--out", str(run)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxrlab", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "CXRLAB_CACHE_DIR": str(tmp_path / "cache")},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    wait_for(lambda: (run / "status.json").is_file(), proc)
    time.sleep(0.5)  # well inside the decoding (several seconds of it)
    proc.send_signal(signal.SIGINT)
    done = finish(proc)
    line = one_line_error(done, code=130)  # one line: no tracebacks from the decoding workers either
    assert line == f"error: interrupted while decoding images; nothing was trained, {run} removed"
    assert not run.exists()


def test_a_diverging_run_stops_with_one_line_and_a_failed_status(tmp_path, d_base):
    run = tmp_path / "run"
    # TensorBoard on: its weight histograms of NaN weights must not crash first
    args = ["train", "--model", "small_cnn", "-q", "--epochs", "2", "--image-size", "32", "--set",
            "eval.tsne=false", "--data", str(d_base), "--out", str(run), "--lr", "1e20"]  # fmt: skip
    line = one_line_error(run_cli(*args))
    assert "loss became NaN at epoch 1" in line or "loss became infinite at epoch 1" in line, line
    assert "lower the learning rate (now 1e+20)" in line
    assert status(run) == {"status": "failed", "error": line.removeprefix("error: ")}
    # an infinite or negative rate never starts
    for lr in ("inf", "-1"):
        one_line_error(run_cli(*B, "--data", str(d_base), "--out", str(tmp_path / f"lr{lr}"), "--lr", lr))
        assert not (tmp_path / f"lr{lr}").exists()


# --------------------------------------------------------------------------- a full disk


def test_full_disk_is_one_line_keeps_complete_checkpoints_and_resumes(tmp_path, d_base, small_fs):
    # how large one checkpoint of this model is
    base = tmp_path / "base"
    run_cli(*B, "--data", str(d_base), "--out", str(base), check=True)
    last = (base / "checkpoints" / "last.ckpt").stat().st_size
    best = (base / "checkpoints" / "best.ckpt").stat().st_size  # weights only: smaller than last.ckpt
    assert last > 2 * 256 * 1024, "the model must be large enough for the margins below to mean something"
    # room for best.ckpt + last.ckpt of epoch 1 and the small files, not for a second last.ckpt beside it
    fs = small_fs(best + int(1.5 * last) + 256 * 1024)
    run = fs / "run"
    proc = run_cli(*B[:5], "3", *B[6:], "--early-stopping", "50", "--data", str(d_base), "--out", str(run))
    line = one_line_error(proc)
    assert "error: no space left on device while writing " in line and "/checkpoints/" in line
    assert line.endswith(f"; free space and resume with `cxr train --resume {run}`")
    assert status(run) == {"status": "failed", "error": line.removeprefix("error: ")}
    for name in ("best.ckpt", "last.ckpt"):  # the previous complete checkpoints, never half a file
        torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)
    assert not [p for p in (run / "checkpoints").iterdir() if p.suffix == ".tmp"]

    subprocess.run(["mount", "-o", "remount,size=64m", str(fs)], check=True)  # space freed
    done = run_cli("train", "--resume", str(run), "-q")
    assert done.returncode == 0, done.stderr
    assert status(run)["status"] == "finished" and history_rows(run) == 3


def test_a_full_cache_is_skipped_with_one_warning(tmp_path, d_base, small_fs):
    fs = small_fs(64 * 1024)
    (fs / "filler").write_bytes(b"\0" * 60_000)
    proc = run_cli(*B, "--data", str(d_base), "--out", str(tmp_path / "run"),
                   env={"CXRLAB_CACHE_DIR": str(fs / "cache")})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    warnings = [w for w in proc.stderr.splitlines() if "cache" in w]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: cannot write to the cache {fs / 'cache'}")
    assert "No space left on device" in warnings[0]


@pytest.mark.parametrize("command", ["train", "audit"])
def test_out_inside_the_data_folder_is_refused_and_the_data_is_untouched(tmp_path, d_base, command):
    data = tmp_path / "data"
    shutil.copytree(d_base, data)
    before = snapshot(data)
    args = [*B, "--data", str(data)] if command == "train" else ["audit", str(data)]
    line = one_line_error(run_cli(*args, "--out", str(data / "results")))
    assert "inside the input folder" in line and str(data) in line
    assert snapshot(data) == before


def test_an_interrupted_atomic_write_leaves_no_temporary_file(tmp_path):
    from cxrlab.runs import atomic_write

    class Interrupting(str):
        def encode(self, *args, **kwargs):  # the write is cut off by Ctrl-C after the temporary file exists
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "metrics.json", Interrupting("{}"))
    assert list(tmp_path.iterdir()) == []


def test_compare_reports_a_run_whose_process_died_as_interrupted_not_running(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / "status.json").write_text(json.dumps({"status": "running", "pid": dead.pid, "host": HOST}))
    line = one_line_error(run_cli("compare", str(run), str(run), "--out", str(tmp_path / "cmp")))
    assert f"interrupted (process {dead.pid} ended without updating status)" in line
    assert f"cxr train --resume {run}" in line


def _check_writable_many(folder: str) -> int:
    from cxrlab.runs import check_writable

    for _ in range(1500):
        check_writable(Path(folder))
    return 0


def test_processes_checking_one_out_folder_at_once_all_pass(tmp_path):
    """Workers of one sweep check the same --out at the same moment: each writes its own probe (a shared
    probe name let one worker delete the other's: 'cannot write to …: No such file or directory')."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert pool.map(_check_writable_many, [str(tmp_path)] * 4) == [0, 0, 0, 0]
    assert list(tmp_path.iterdir()) == []  # no probe left behind
