"""train.scheduler / warmup_epochs / label_smoothing / ema_decay on a small real PneumoniaMNIST subset."""

from __future__ import annotations

import csv
import json

import torch

from cxrlab.training.module import lr_schedule
from tests.conftest import run_cli


def test_lr_schedule_warms_up_then_decays_to_zero():
    f = lr_schedule(total=100, warmup=10, cosine=True)
    assert f(0) < f(5) < f(9) <= 1.0
    assert f(10) == 1.0 and 0.49 < f(55) < 0.51 and f(100) == 0.0
    assert lr_schedule(100, 0, cosine=False)(50) == 1.0


def test_ema_weights_are_validated_and_saved(tmp_path, pneumoniamnist_npz):
    out = tmp_path / "run"
    proc = run_cli(
        "train", "--data", str(pneumoniamnist_npz), "--image-size", "28", "--model", "small_cnn",
        "--epochs", "2", "--batch-size", "32", "--max-per-class", "40", "--optimizer", "adamw",
        "--lr", "1e-3",
        "--set", "train.scheduler=cosine", "--set", "train.warmup_epochs=1", "--set", "train.ema_decay=0.9",
        "--set", "train.label_smoothing=0.1", "--set", "train.early_stopping=null", "--no-tensorboard",
        "--set", "eval.tsne=false", "--set", "eval.bootstrap=0", "--out", str(out), "-q",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert float(rows[0]["lr"]) < float(rows[1]["lr"]) <= 1e-3  # logged at epoch start: warm-up, then peak
    ckpt = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    # the EMA callback put the averaged weights in state_dict and kept the raw ones apart
    assert "current_model_state" in ckpt
    key = next(k for k in ckpt["state_dict"] if k.endswith("weight"))
    assert not torch.equal(ckpt["state_dict"][key], ckpt["current_model_state"][key])
    # batch-norm statistics are the trained model's, not averaged (averaged ones lag at mean 0 / var 1
    # and made the averaged model predict one class on short runs)
    stats = [k for k in ckpt["state_dict"] if k.endswith("running_var")]
    assert stats and all(torch.equal(ckpt["state_dict"][k], ckpt["current_model_state"][k]) for k in stats)
    assert json.loads((out / "metrics.json").read_text())["test"]["n"] > 0
