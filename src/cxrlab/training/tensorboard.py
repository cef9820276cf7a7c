"""TensorBoard extras for every run: sample inputs, a confusion matrix per epoch, histograms.

Scalars (train/val loss and accuracy, learning rate) reach TensorBoard through Lightning's
``TensorBoardLogger``; this callback adds what scalars cannot show:

* ``samples/train`` — training images as the model sees them (after resizing), titled with their class
  (multi-label: one row per finding of images that have it, and a row of images with none);
* ``confusion/val`` — the validation confusion matrix, one image per epoch (slider in the IMAGES tab;
  multi-label runs get ``val_auc/<finding>`` scalars instead);
* ``weights/<name>`` and ``gradients/<name>`` — histograms of every trainable tensor, once per epoch
  (gradients from the first optimiser step of the epoch);
* ``test/<metric>`` (and ``test_auc/<finding>``) — the test metrics of metrics.json, written once after
  evaluation at the last epoch's step (:func:`log_test_metrics`).

Open with ``tensorboard --logdir RUN/tensorboard``. Under DDP only global rank 0 writes, and its
confusion matrix covers the validation images of rank 0's shard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch


def _tensorboard_writer(trainer: L.Trainer):
    """The SummaryWriter of the trainer's TensorBoardLogger, or None."""
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def confusion_image(cm: np.ndarray, classes: list[str], cell: int = 56) -> np.ndarray:
    """Confusion matrix drawn with PIL (milliseconds, unlike a matplotlib figure per epoch).

    Rows are true classes, columns predicted; cells are shaded by row share and show count and share.
    """
    from PIL import Image, ImageDraw

    k = len(classes)
    margin = 8 + 7 * min(18, max(len(c) for c in classes))
    img = Image.new("RGB", (margin + k * cell + 8, 24 + k * cell + 8), "white")
    draw = ImageDraw.Draw(img)
    draw.text((margin, 6), "predicted ->  (rows: true class)", fill="black")
    rows = cm.sum(axis=1, keepdims=True).clip(min=1)
    for i in range(k):
        draw.text((4, 24 + i * cell + cell // 2 - 5), classes[i][:18], fill="black")
        for j in range(k):
            share = cm[i, j] / rows[i, 0]
            shade = int(255 - 200 * share)
            x0, y0 = margin + j * cell, 24 + i * cell
            draw.rectangle([x0, y0, x0 + cell - 2, y0 + cell - 2], fill=(shade, shade, 255))
            color = "white" if share > 0.5 else "black"
            draw.text((x0 + 6, y0 + cell // 2 - 12), f"{cm[i, j]}", fill=color)
            draw.text((x0 + 6, y0 + cell // 2 + 2), f"{share:.0%}", fill=color)
    return np.asarray(img)


def finding_picture(images: np.ndarray, targets: np.ndarray, findings: list[str], per_row: int = 4):
    """Multi-label samples: per finding, up to ``per_row`` training images that have it; then images with
    no finding (targets all 0). Unknown targets (NaN) count as neither."""
    from cxrlab.figures import grid_picture

    rows, titles = [], []
    for j, name in enumerate(findings):
        idx = np.flatnonzero(targets[:, j] == 1)[:per_row]
        if len(idx):
            rows.append(images[idx])
            titles.append(name)
    none = np.flatnonzero((targets == 0).all(axis=1))[:per_row]
    if len(none):
        rows.append(images[none])
        titles.append("no finding")
    return grid_picture(rows, row_titles=titles, cell=64)


def log_test_metrics(folder: Path, test: dict[str, Any], step: int) -> None:
    """The test metrics (metrics.json's ``test``) as TensorBoard scalars in ``folder`` at ``step``: every
    metric of the registry (:mod:`cxrlab.metrics`) the split has, as ``test/<name>`` (the deployed decision)
    and, for decision metrics of a thresholded binary run, ``test_argmax/<name>``; ``test_auc/<finding>``
    per finding with a defined AUC. Training's logger is closed by then, so this writes one more event file
    beside its own."""
    from torch.utils.tensorboard import SummaryWriter

    from cxrlab.metrics import metrics_for

    multi = "per_finding" in test
    argmax = test.get("argmax") or {}
    writer = SummaryWriter(str(folder))
    try:
        for metric in metrics_for("multi" if multi else "single", binary="sensitivity" in test):
            value = metric.value(test)
            if value is not None and np.isfinite(value):
                writer.add_scalar(f"test/{metric.name}", value, step)
            at_argmax = metric.value(argmax) if metric.decision else None
            if at_argmax is not None and np.isfinite(at_argmax):
                writer.add_scalar(f"test_argmax/{metric.name}", at_argmax, step)
        for name, finding in (test.get("per_finding") or {}).items():
            if _scalar(finding.get("auc")):
                writer.add_scalar(f"test_auc/{name}", float(finding["auc"]), step)
    finally:
        writer.close()


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


class TensorBoardExtras(L.Callback):
    """Sample inputs with labels, per-epoch confusion matrix, weight and gradient histograms."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        classes: list[str],
        per_class: int = 4,
        histograms: bool = True,
        multilabel: bool = False,
    ):
        # multi-label: ``labels`` are the targets (N, findings); samples per finding, and per-finding
        # validation AUC scalars instead of a confusion matrix
        self.multilabel = multilabel
        self.images = images
        self.labels = labels
        self.classes = list(classes)
        self.per_class = per_class
        self.histograms = histograms
        self._preds: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []
        self._grads_pending = False

    # ------------------------------------------------------------------ samples
    def on_train_start(self, trainer, pl_module) -> None:  # noqa: D102
        writer = _tensorboard_writer(trainer)
        if writer is None or not trainer.is_global_zero or self.images is None or not len(self.images):
            return
        if self.multilabel:  # ``labels`` are the targets (N, findings)
            picture = finding_picture(self.images, self.labels, self.classes, self.per_class)
        else:
            from cxrlab.figures import sample_picture

            picture = sample_picture(self.images, self.labels, self.classes, self.per_class)
        writer.add_image("samples/train", np.asarray(picture.convert("RGB")), 0, dataformats="HWC")

    # ------------------------------------------------------------------ confusion matrix
    def on_validation_epoch_start(self, trainer, pl_module) -> None:  # noqa: D102
        self._preds, self._targets = [], []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):  # noqa: D102
        if not trainer.is_global_zero or _tensorboard_writer(trainer) is None:
            return
        logits = outputs if isinstance(outputs, torch.Tensor) else None
        x, y = batch
        if logits is None:  # the module returned nothing: one more forward pass
            with torch.no_grad():
                logits = pl_module(x)
        logits = logits.detach().float()
        if self.multilabel:
            self._preds.append(logits.cpu().numpy())
            self._targets.append(y.detach().cpu().numpy())
            return
        pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
        self._preds.append(pred.cpu().numpy())
        self._targets.append(y.detach().cpu().numpy())

    def on_validation_epoch_end(self, trainer, pl_module) -> None:  # noqa: D102
        writer = _tensorboard_writer(trainer)
        if writer is None or not trainer.is_global_zero or not self._preds or trainer.sanity_checking:
            return
        from sklearn.metrics import confusion_matrix

        y, p = np.concatenate(self._targets), np.concatenate(self._preds)
        if self.multilabel:
            from cxrlab.training.module import macro_auc

            for j, name in enumerate(self.classes):
                auc = macro_auc(y[:, j : j + 1], p[:, j : j + 1])
                if np.isfinite(auc):
                    writer.add_scalar(f"val_auc/{name}", auc, trainer.current_epoch + 1)
            return
        cm = confusion_matrix(y, p, labels=list(range(len(self.classes))))
        epoch = trainer.current_epoch + 1
        writer.add_image("confusion/val", confusion_image(cm, self.classes), epoch, dataformats="HWC")

    # ------------------------------------------------------------------ histograms
    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: D102
        self._grads_pending = self.histograms

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # noqa: D102
        if not self._grads_pending:
            return
        self._grads_pending = False
        writer = _tensorboard_writer(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        for name, param in pl_module.named_parameters():
            if param.requires_grad and param.grad is not None:
                writer.add_histogram(
                    f"gradients/{name}", param.grad.detach().float().cpu(), trainer.current_epoch + 1
                )

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: D102
        writer = _tensorboard_writer(trainer)
        if not self.histograms or writer is None or not trainer.is_global_zero:
            return
        for name, param in pl_module.named_parameters():
            if param.requires_grad:
                writer.add_histogram(
                    f"weights/{name}", param.detach().float().cpu(), trainer.current_epoch + 1
                )
        writer.flush()
