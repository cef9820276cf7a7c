"""Issue 26 item 4: every step that takes seconds shows a progress bar on a terminal — decoding, the
frozen-backbone feature pass, the epochs (counted from 1: "Epoch 2/2"), the explanations, `cxr evaluate`,
`cxr audit`, `cxr prepare`, `cxr reproduce` — and none with -q or when stderr is not a terminal; the audit's
warnings come before training; "explaining test images" only when images are explained.

The commands run as real processes whose stderr is a pseudo-terminal (80 columns), stdout a pipe."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.conftest import DATA, run_cli

FAST = ["--set", "eval.tsne=false", "--set", "eval.bootstrap=50", "--no-tensorboard"]
SMALL = ["--model", "small_cnn", "--image-size", "32", "--epochs", "2", *FAST]
BAR = re.compile(r"\d+%\|")  # tqdm's "40%|████"
REDRAW = re.compile(r"\r(?!\n)")  # a bar redrawing its line (a terminal sends \r\n for each newline)


def on_tty(args: list[str], until: str | None = None, timeout: float = 300) -> tuple[int, str, str]:
    """`python -m cxrlab ARGS` with stderr on a pseudo-terminal; return (exit status, stdout, what the
    terminal received). With ``until``: send Ctrl-C (SIGINT) once the terminal has shown that text."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    out_r, out_w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cxrlab", *args], stdin=subprocess.DEVNULL, stdout=out_w, stderr=slave,
        env=dict(os.environ),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    os.close(slave)
    os.close(out_w)
    chunks = {master: b"", out_r: b""}
    open_fds, deadline, sent = [master, out_r], time.monotonic() + timeout, False
    while open_fds and time.monotonic() < deadline:
        ready, _, _ = select.select(open_fds, [], [], 0.2)
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the terminal's other end closed (EIO)
                data = b""
            if not data:
                open_fds.remove(fd)
                continue
            chunks[fd] += data
        if until and not sent and until.encode() in chunks[master]:
            proc.send_signal(signal.SIGINT)
            sent = True
    if proc.poll() is None and open_fds:
        proc.kill()
    code = proc.wait(timeout=60)
    os.close(master)
    os.close(out_r)
    return code, chunks[out_r].decode(errors="replace"), chunks[master].decode(errors="replace")


def bars(text: str) -> list[str]:
    """The progress bars' descriptions seen in ``text`` (each redraw starts with a carriage return)."""
    return sorted({m.group(1).strip() for m in re.finditer(r"\r([^\r\n|]*?):\s*\d+%\|", text)})


# --------------------------------------------------------------------------- cxr train


@pytest.fixture(scope="module")
def tty_run(tmp_path_factory, torch_home, covid_dir) -> tuple[Path, str, str]:
    """A frozen-backbone run (feature pass, explanations on) trained with stderr on a terminal."""
    from tests.trust.conftest import copy_subset

    data = copy_subset(covid_dir, tmp_path_factory.mktemp("d") / "covid", {"train": 10, "test": 6},
                       ("covid", "normal"))  # fmt: skip
    out = tmp_path_factory.mktemp("tty") / "run"
    args = ["train", "--data", str(data), "--model", "mobilenet_v2", "--pretrained", "--freeze", "backbone",
            "--image-size", "64", "--epochs", "2", *FAST, "--out", str(out)]  # fmt: skip
    code, stdout, tty = on_tty(args)
    assert code == 0, tty
    return out, stdout, tty


def test_train_on_a_terminal_shows_every_long_step_and_counts_epochs_from_1(tty_run):
    _, stdout, tty = tty_run
    shown = bars(tty)
    for step in ("decoding images", "features (train)", "Epoch 1/2", "Epoch 2/2"):
        assert step in shown, (step, shown)
    assert any(s.startswith("explaining test images (Grad-CAM") for s in shown), shown
    # never Lightning's 0-based "Epoch 1/1" for the last of 2, nor its "Epoch 1" drawn before the total
    assert not re.search(r"Epoch 0\b|Epoch \d+/1\b|Epoch \d+:", tty)
    # the data audit's warnings come before the feature pass and the epochs, not after the test scores
    first_warning = tty.index("warning: ")
    assert first_warning < tty.index("features (train)") < tty.index("Epoch 1/2")
    assert "test accuracy" in stdout and "\r" not in stdout and "Epoch" not in stdout  # bars only on stderr


def test_evaluate_on_a_terminal_shows_progress_and_none_with_q(tty_run):
    run, _, _ = tty_run
    code, _, tty = on_tty(["evaluate", str(run)])
    assert code == 0, tty
    shown = bars(tty)
    assert "decoding images" in shown and any(s.startswith("explaining test images") for s in shown), shown
    code, _, tty = on_tty(["evaluate", str(run), "-q", "--out", str(run.parent / "again")])
    assert code == 0, tty
    assert not BAR.search(tty) and not REDRAW.search(tty), tty


@pytest.mark.parametrize("quiet", [False, True], ids=["terminal", "-q"])
def test_train_with_explanations_off_says_nothing_of_them(tmp_path, small_covid, quiet):
    args = ["train", "--data", str(small_covid), *SMALL, "--set", "eval.explain=off"]
    code, stdout, tty = on_tty([*args, "--out", str(tmp_path / "r"), *(["-q"] if quiet else [])])
    assert code == 0, tty
    assert "explaining" not in tty
    if quiet:
        assert not BAR.search(tty) and not REDRAW.search(tty) and "Epoch" not in tty, tty
    else:
        assert {"decoding images", "Epoch 1/2", "Epoch 2/2"} <= set(bars(tty)), bars(tty)


def test_no_progress_when_stderr_is_not_a_terminal(tmp_path, small_covid):
    proc = run_cli("train", "--data", str(small_covid), *SMALL, "--out", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    for text in (proc.stdout, proc.stderr):
        assert not BAR.search(text) and "\r" not in text and "Epoch" not in text, text
    assert "explaining" not in proc.stderr


# --------------------------------------------------------------------------- audit, prepare, reproduce


def test_audit_and_prepare_show_progress_on_a_terminal_and_none_with_q(tmp_path, small_covid):
    code, _, tty = on_tty(["audit", "--data", str(small_covid), "--out", str(tmp_path / "a")])
    assert code == 0, tty
    assert {"reading images", "hashing files"} <= set(bars(tty)), bars(tty)
    code, _, tty = on_tty(["audit", "--data", str(small_covid), "--out", str(tmp_path / "b"), "-q"])
    assert code == 0 and not BAR.search(tty) and not REDRAW.search(tty), tty
    code, _, tty = on_tty(["prepare", "--data", str(small_covid), "--image-size", "40"])
    assert code == 0 and "decoding images" in bars(tty), tty
    code, _, tty = on_tty(["prepare", "--data", str(small_covid), "--image-size", "40", "-q"])
    assert code == 0 and not BAR.search(tty) and not REDRAW.search(tty), tty


def test_reproduce_shows_the_training_progress_on_a_terminal(tmp_path, covid_dir):
    out = tmp_path / "r"
    args = ["reproduce", "003", "--data-root", str(DATA), "--out", str(out)]
    code, stdout, tty = on_tty(args, until="Epoch 1/")
    assert "report 003 · p1_task1_mlp_relu (train)" in stdout
    assert any(s.startswith("Epoch 1/") for s in bars(tty)), tty
    assert code == 130, tty  # stopped by the Ctrl-C sent once the bar showed
