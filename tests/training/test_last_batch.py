"""Training never ends an epoch on a batch of one sample (batch norm cannot normalise it).

covid-challenge has 241 training images after the patient-grouped validation split: batch 10
leaves a last batch of one, which crashed InceptionV3's auxiliary classifier (issue 12).
"""

from __future__ import annotations

import json

from cxrlab.training.train import drops_last_batch
from tests.conftest import run_cli


def test_only_a_last_batch_of_one_is_dropped():
    assert drops_last_batch(241, 10)
    assert not drops_last_batch(240, 10) and not drops_last_batch(242, 10)
    assert not drops_last_batch(1, 10), "a split of one image is kept (nothing else to train on)"


def test_covid_challenge_at_batch_10_trains_with_batch_norm_on_a_batch_of_one(tmp_path, covid_dir):
    """Real data, all four classes: 241 training images, batch 10, dense batch norm in the head."""
    out = tmp_path / "run"
    proc = run_cli(
        "train", "--data", str(covid_dir), "--model", "small_cnn", "--image-size", "32",
        "--batch-size", "10", "--epochs", "1", "--out", str(out), "-q", "--no-tensorboard",
        "--set", "model.head.hidden=[8]", "--set", "model.head.dense_batch_norm=true",
        "--set", "model.width=0.125", "--set", "eval.tsne=false", "--set", "eval.bootstrap=50",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["covid", "normal", "pneumonia_bac", "pneumonia_vir"]
    assert sum(metrics["data"]["counts"]["train"].values()) == 241, "241 = 24 × 10 + 1"
