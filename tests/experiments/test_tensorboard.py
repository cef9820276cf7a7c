"""TensorBoard logs of a real run: scalars, sample images, a confusion matrix per epoch, histograms, and the
test metrics (single- and multi-label)."""

from __future__ import annotations

import csv
import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import DATA, run_cli


def _events(run):
    ea = EventAccumulator(
        str(run / "tensorboard"), size_guidance={"images": 0, "histograms": 0, "scalars": 0}
    )
    ea.Reload()
    return ea


def test_tensorboard_has_images_and_histograms(runs):
    for name in ("mnv2", "cnn"):  # fast path (head only) and full training
        run = runs[name]
        epochs = len(list(csv.DictReader((run / "history.csv").open())))
        ea = _events(run)
        tags = ea.Tags()
        assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr"} <= set(tags["scalars"])
        assert "samples/train" in tags["images"]
        confusion = ea.Images("confusion/val")
        assert [e.step for e in confusion] == list(range(1, epochs + 1))
        assert all(e.width > 100 and e.height > 100 for e in confusion)
        weights = [t for t in tags["histograms"] if t.startswith("weights/")]
        grads = [t for t in tags["histograms"] if t.startswith("gradients/")]
        assert weights and grads and len(ea.Histograms(weights[0])) == epochs
    conv = [t for t in _events(runs["cnn"]).Tags()["histograms"] if "backbone" in t]
    assert conv  # full training: the convolutions' weights and gradients too


def test_test_metrics_reach_tensorboard(runs):
    for name in ("mnv2", "cnn"):
        run = runs[name]
        test = json.loads((run / "metrics.json").read_text())["test"]
        epochs = len(list(csv.DictReader((run / "history.csv").open())))
        ea = _events(run)
        for metric in ("accuracy", "balanced_accuracy", "auc", "loss", "ece"):
            (event,) = ea.Scalars(f"test/{metric}")
            assert event.step == epochs and event.value == pytest.approx(test[metric], rel=1e-6)
        # every registered metric the split has (cxrlab.metrics), e.g. macro F1 at the deployed decision
        scalars = set(ea.Tags()["scalars"])
        assert {"test/sensitivity", "test/specificity", "test/f1_macro", "test/precision_weighted"} <= scalars
        assert ea.Scalars("test/f1_macro")[0].value == pytest.approx(test["macro"]["f1"], rel=1e-6)
        if test.get("decision") == "threshold":  # argmax beside the deployed decision, labelled
            assert ea.Scalars("test_argmax/accuracy")[0].value == pytest.approx(
                test["argmax"]["accuracy"], rel=1e-6
            )


def test_multilabel_run_logs_sample_images_and_test_metrics(tmp_path):
    nih = DATA / "nih-1000"
    if not (nih / "labels.csv").is_file():
        pytest.skip("nih-1000 not available")
    run = tmp_path / "nih"
    proc = run_cli(
        "train", "--data", str(nih / "images"), "--labels", str(nih / "labels.csv"), "--labels-format", "nih",
        "--model", "small_cnn", "--image-size", "32", "--epochs", "1", "-q", "--out", str(run),
        "--set", "eval.tsne=false", "--set", "eval.bootstrap=50",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    test = json.loads((run / "metrics.json").read_text())["test"]
    ea = _events(run)
    tags = ea.Tags()
    (samples,) = ea.Images("samples/train")  # one row of images per finding, as the model sees them
    assert samples.width > 100 and samples.height > 100
    assert ea.Scalars("test/macro_auc")[0].value == pytest.approx(test["macro_auc"], rel=1e-6)
    assert {"test/micro_auc", "test/loss", "test/mean_average_precision"} <= set(tags["scalars"])
    defined = {f for f, v in test["per_finding"].items() if v["auc"] is not None}
    per_finding = {t.removeprefix("test_auc/") for t in tags["scalars"] if t.startswith("test_auc/")}
    assert defined and per_finding == defined
    assert any(t.startswith("val_auc/") for t in tags["scalars"])
