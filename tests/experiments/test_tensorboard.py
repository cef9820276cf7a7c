"""TensorBoard logs of a real run: scalars, sample images, a confusion matrix per epoch, histograms."""

from __future__ import annotations

import csv

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


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
