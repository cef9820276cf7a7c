"""`train.restore` (issue 27, item 7): best evaluates and saves the best validation epoch's weights
(checkpoints/best.ckpt), last the final epoch's (checkpoints/last.ckpt, what Keras keeps); the choice is in
config.yaml and the report."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from cxrlab.evaluation.inference import load_run
from cxrlab.training.train import load_checkpoint
from tests.conftest import run_cli

# val_acc on a small validation split ties between epochs; a tie is no improvement, so the best epoch stays
# an early one while training goes on: best and last differ
ARGS = ("--classes", "covid,normal", "--model", "small_cnn", "--image-size", "32", "--epochs", "5",
        "--max-per-class", "40", "-q", "--no-tensorboard", "--set", "train.early_stopping=null",
        "--set", "train.monitor=val_acc", "--set", "eval.tsne=false", "--set", "eval.bootstrap=0",
        "--set", "eval.explain=off")  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory, covid_dir):
    """The same training (same seed) twice, restore best and restore last."""
    root = tmp_path_factory.mktemp("restore")
    for restore in ("best", "last"):
        run_cli("train", "--data", str(covid_dir), *ARGS, "--restore", restore, "--out", str(root / restore),
                check=True)  # fmt: skip
    return root


def _weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Lightning module's state_dict as the network's (the ``net.`` prefix dropped)."""
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)


@pytest.mark.parametrize("restore", ["best", "last"])
def test_the_run_evaluates_the_weights_it_was_asked_for(runs, restore):
    run = runs / restore
    best, last = (load_checkpoint(run / "checkpoints" / f"{n}.ckpt") for n in ("best", "last"))
    assert best["epoch"] < last["epoch"], "the training did not make best and last differ"
    model = {k: v for k, v in load_run(run).model.state_dict().items()}
    chosen, other = (best, last) if restore == "best" else (last, best)
    assert _same(model, _weights(chosen["state_dict"]))
    assert not _same(model, _weights(other["state_dict"]))
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["restore"] == restore
    html = (run / "report.html").read_text()
    assert f"train.restore: {restore}" in html
    assert ("the last epoch" in html) == (restore == "last")


def test_best_and_last_score_differently(runs):
    """Same seed, same epochs: only the restored weights differ, and so do the test probabilities."""
    best, last = (json.loads((runs / n / "metrics.json").read_text())["test"] for n in ("best", "last"))
    assert best["loss"] != last["loss"]


def test_a_bad_restore_is_one_line(covid_dir, tmp_path):
    out = tmp_path / "r"
    proc = run_cli("train", "--data", str(covid_dir), *ARGS, "--restore", "final", "--out", str(out))
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and all(w in lines[0] for w in ("restore", "best", "last")), proc.stderr
    assert not out.exists()
