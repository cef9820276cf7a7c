"""Issue 26 item 5: what the CLI and the package say is what they do — `cxr audit --data`, the audit's
default folder named after the dataset, the package docstring's configs, `cxr reproduce` stopping on the
first Ctrl-C / SIGTERM, run folders that keep no lock file once the command ends."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import lightning as L
import pytest

import cxrlab
from cxrlab.cli.audit import default_out
from cxrlab.config import RunConfig
from cxrlab.reproduce.catalog import load_catalog
from cxrlab.runs import LOCK, RunInUse, read_csv, run_lock
from tests.conftest import DATA, run_cli
from tests.trust.conftest import one_line_error
from tests.trust.test_resume import start_cxr

QUICK = ["--set", "eval.explain=off", "--set", "eval.tsne=false", "--set", "eval.bootstrap=50"]
SMALL = ["--model", "small_cnn", "--image-size", "32", "--epochs", "1", "--no-tensorboard", "-q", *QUICK]


# --------------------------------------------------------------------------- a, e: cxr audit


def test_default_audit_folder_is_named_after_the_dataset():
    assert default_out("../shared/data/nih-1000/images") == Path("audits/nih-1000")
    assert default_out("../shared/data/covid-challenge") == Path("audits/covid-challenge")
    assert default_out("../shared/data/covid-challenge/train") == Path("audits/covid-challenge")
    assert default_out("/data/pneumoniamnist/pneumoniamnist.npz") == Path("audits/pneumoniamnist")
    assert default_out("/data/cohort/images/png") == Path("audits/cohort")


def test_audit_takes_data_as_an_option_and_writes_audits_dataset(tmp_path, covid_dir, monkeypatch):
    images = tmp_path / "cohort-7" / "images"  # the layout of a label-file dataset: a generic last name
    for cls in ("covid", "normal"):
        (images / cls).mkdir(parents=True)
        for f in sorted((covid_dir / "train" / cls).iterdir())[:10]:
            shutil.copy(f, images / cls / f.name)
    monkeypatch.chdir(tmp_path)
    proc = run_cli("audit", "--data", str(images))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "audits" / "cohort-7" / "audit.json").is_file()
    assert "audits/cohort-7/audit.html" in proc.stdout
    # the positional form still works
    proc = run_cli("audit", str(images), "--out", str(tmp_path / "positional"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "positional" / "audit.json").is_file()
    # two different datasets, or none, is one line
    line = one_line_error(run_cli("audit", str(images), "--data", str(tmp_path)))
    assert "two datasets given" in line
    assert "cxr audit --data FOLDER" in one_line_error(run_cli("audit"))
    assert "--data" in run_cli("audit", "--help").stdout


# --------------------------------------------------------------------------- b: help(cxrlab)


def test_package_docstring_names_only_configs_that_exist():
    named = re.findall(r"[\w./-]+\.ya?ml", cxrlab.__doc__ or "")
    assert named, "the docstring's example loads a config"
    recipes = Path(cxrlab.__file__).parent / "recipes"  # `configs/` in a clone links here
    for name in named:
        assert (recipes / Path(name).name).is_file(), f"{name} is not a recipe in {recipes}"
        RunConfig.load(recipes / Path(name).name)  # and it loads


# --------------------------------------------------------------------------- c: cxr reproduce stops at once


def _wait_for_training(out: Path, proc, timeout: float = 300) -> None:
    """Until some run folder under OUT holds an epoch of history (training is under way)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if any(read_csv(h) for h in out.glob("*/*/history.csv") if h.stat().st_size):
            return
        time.sleep(0.02)
    raise AssertionError(f"no training started ({proc.poll()=})")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_reproduce_stops_on_the_first_signal_and_marks_the_experiment_interrupted(sig, tmp_path, covid_dir):
    out = tmp_path / "r"
    proc = start_cxr(["reproduce", "003", "--data-root", str(DATA), "--out", str(out), "-q"])
    try:
        _wait_for_training(out, proc)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    code = 130 if sig == signal.SIGINT else 143
    line = one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), code=code)
    assert ("interrupted" if sig == signal.SIGINT else "terminated (SIGTERM)") in line
    assert "recorded as interrupted" in line and "run the same command again" in line
    results = json.loads((out / "reproduce.json").read_text())["results"]
    keys = [e.key for e in load_catalog()["003"].experiments]
    ran = [k for k in keys if k in results]
    # the experiments before the signal finished, the running one is interrupted (not failed), none followed
    assert ran == keys[: len(ran)] and results[ran[-1]]["status"] == "interrupted", results
    assert all(results[k]["status"] == "finished" for k in ran[:-1])
    stopped = out / results[ran[-1]]["folder"]
    assert json.loads((stopped / "status.json").read_text())["status"] == "interrupted"
    later = [e.id for e in load_catalog()["003"].experiments][len(ran) :]
    assert later and not any((out / "003" / e).exists() for e in later)
    assert not (out / LOCK).exists()


# --------------------------------------------------------------------------- d: no lock file left behind


def test_a_finished_cxr_train_keeps_no_lock_file(tmp_path, small_covid):
    run = tmp_path / "run"
    proc = run_cli("train", "--data", str(small_covid), *SMALL, "--out", str(run))
    assert proc.returncode == 0, proc.stderr
    assert (run / "metrics.json").is_file() and not (run / LOCK).exists()
    proc = run_cli("evaluate", str(run))  # evaluate locks the run too, and lets go the same way
    assert proc.returncode == 0, proc.stderr
    assert not (run / LOCK).exists()


class _Probe(L.Callback):
    """Checks the lock while training runs; with ``fail``, then breaks the run."""

    def __init__(self, run: Path, fail: bool):
        self.run, self.fail, self.held = run, fail, None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        try:
            run_lock(self.run).release()
            self.held = False
        except RunInUse:
            self.held = (self.run / LOCK).is_file()
        if self.fail:
            raise RuntimeError("planted failure after an epoch")


@pytest.mark.parametrize("fail", [False, True], ids=["finished", "failed"])
def test_the_lock_holds_while_training_and_is_gone_after(tmp_path, small_covid, fail):
    from cxrlab.pipeline.train import train

    cfg = RunConfig.model_validate(
        {"data": {"path": str(small_covid), "image_size": 32}, "model": {"name": "small_cnn"},
         "train": {"epochs": 1, "tensorboard": False},
         "eval": {"explain": "off", "tsne": False, "bootstrap": 50}}
    )  # fmt: skip
    run = tmp_path / "run"
    probe = _Probe(run, fail)
    if fail:
        with pytest.raises(RuntimeError, match="planted failure"):
            train(cfg, run, progress=False, callbacks=[probe])
        assert json.loads((run / "status.json").read_text())["status"] == "failed"
    else:
        train(cfg, run, progress=False, callbacks=[probe])
    assert probe.held is True  # another taker was refused while the run was being written
    assert not (run / LOCK).exists()
    with run_lock(run):  # and the folder can be locked again at once
        assert (run / LOCK).is_file()
    assert not (run / LOCK).exists()


def test_train_leaves_the_callers_config_as_given(tmp_path, small_covid):
    """The Python API resolves defaults (here the model's input size) on its own copy: a notebook's config
    object is not changed by training, and config.yaml records what the run resolved."""
    from cxrlab.pipeline.train import train

    cfg = RunConfig.model_validate(
        {"data": {"path": str(small_covid)}, "model": {"name": "small_cnn"},
         "train": {"epochs": 1, "tensorboard": False},
         "eval": {"explain": "off", "tsne": False, "bootstrap": 50}}
    )  # fmt: skip
    before = cfg.model_dump()
    train(cfg, tmp_path / "run", progress=False)
    assert cfg.model_dump() == before and cfg.data.image_size is None
    saved = RunConfig.load(tmp_path / "run" / "config.yaml")
    assert saved.data.image_size == 64  # small_cnn's input size, resolved in the run
