"""The LightningModule: loss, optimiser, metrics logged per epoch."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrlab.config import TrainConfig
from cxrlab.errors import CxrError


class TrainingDiverged(CxrError):
    """The loss became NaN or infinite: training cannot continue from here."""


def logits_to_probs(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``(N, C)`` from softmax logits or a single sigmoid logit."""
    logits = logits.float()
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def main_logits(output: object) -> torch.Tensor:
    """Logits from a model output (Inception returns (logits, aux_logits) while training)."""
    if isinstance(output, tuple):
        return output[0]
    return output  # type: ignore[return-value]


def masked_bce(
    logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-label loss: binary cross-entropy with logits per (image, finding), averaged over the cells
    whose target is not NaN (NaN = ignored: uncertain or unknown); ``pos_weight`` per finding."""
    mask = ~torch.isnan(targets)
    per_cell = F.binary_cross_entropy_with_logits(
        logits.float(), torch.where(mask, targets, torch.zeros_like(targets)).float(),
        pos_weight=pos_weight, reduction="none",
    )  # fmt: skip
    return (per_cell * mask).sum() / mask.sum().clamp(min=1)


def macro_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean ROC AUC over the findings (columns) that have both classes among their non-NaN targets;
    NaN when none has."""
    from sklearn.metrics import roc_auc_score

    aucs = []
    for j in range(targets.shape[1]):
        known = ~np.isnan(targets[:, j])
        t = targets[known, j]
        if 0 < t.sum() < len(t):
            aucs.append(roc_auc_score(t, scores[known, j]))
    return float(np.mean(aucs)) if aucs else float("nan")


# Per-epoch logging; sync_dist averages over DDP processes (a no-op in a single process).
_EPOCH = {"on_step": False, "on_epoch": True, "prog_bar": True, "sync_dist": True}


class ClassifierModule(L.LightningModule):
    """Trains any ``net`` mapping inputs to logits (a whole classifier, or a head on cached features)."""

    def __init__(
        self,
        net: nn.Module,
        train_cfg: TrainConfig,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        l2: float = 0.0,
        l2_modules: list[nn.Module] | None = None,
        multilabel: bool = False,
        pos_weight: torch.Tensor | None = None,
    ):
        super().__init__()
        self.net = net
        self.cfg = train_cfg
        self.num_classes = num_classes
        self.l2 = l2
        self._l2_modules = l2_modules or []
        self.multilabel = multilabel
        self.register_buffer(
            "class_weights", class_weights if class_weights is not None else torch.ones(0), persistent=False
        )
        self.register_buffer(
            "pos_weight", pos_weight if pos_weight is not None else torch.ones(0), persistent=False
        )
        # val_auc: logged for multi-label runs and whenever it is the monitor (history.csv stays as it was)
        self.track_auc = multilabel or train_cfg.monitor == "val_auc"
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return main_logits(self.net(x))

    def loss(self, output: object, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (softmax) or BCE (single logit); Inception aux logits weighted 0.4."""
        if isinstance(output, tuple):
            main, aux = output[0], output[1]
            return self.loss(main, y) + (0.4 * self.loss(aux, y) if aux is not None else 0.0)
        logits = output.float()  # type: ignore[union-attr]
        if self.multilabel:
            return masked_bce(logits, y, self.pos_weight if self.pos_weight.numel() else None)
        weight = self.class_weights if self.class_weights.numel() else None
        smooth = self.cfg.label_smoothing if self.training else 0.0  # validation/test loss: plain
        if logits.shape[1] == 1:
            target = y.float() * (1 - smooth) + 0.5 * smooth
            w = weight[y] if weight is not None else None
            return F.binary_cross_entropy_with_logits(logits[:, 0], target, weight=w)
        return F.cross_entropy(logits, y, weight=weight, label_smoothing=smooth)

    def penalty(self) -> torch.Tensor | float:
        """Keras-style L2 penalty: l2 × sum of squared weights of the chosen layers."""
        if not self.l2 or not self._l2_modules:
            return 0.0
        return self.l2 * sum((m.weight**2).sum() for m in self._l2_modules if hasattr(m, "weight"))

    def training_step(self, batch, batch_idx):  # noqa: D102
        x, y = batch
        output = self.net(x)
        loss = self.loss(output, y)
        total = loss + self.penalty()
        self._check_finite(total, "")
        acc = self.accuracy(main_logits(output), y)
        self.log("train_loss", loss, batch_size=len(y), **_EPOCH)
        self.log("train_acc", acc, batch_size=len(y), **_EPOCH)
        return total

    def validation_step(self, batch, batch_idx):  # noqa: D102
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        self._check_finite(loss, "validation ")
        acc = self.accuracy(logits, y)
        self.log("val_loss", loss, batch_size=len(y), **_EPOCH)
        self.log("val_acc", acc, batch_size=len(y), **_EPOCH)
        if self.track_auc:
            self._val_outputs.append((logits.detach().float().cpu(), y.detach().cpu()))
        return logits.detach()  # for callbacks (TensorBoard's confusion matrix)

    def accuracy(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Share of correct classes; multi-label: of correct (image, finding) cells at 0.5, NaN left out."""
        if self.multilabel:
            known = ~torch.isnan(y)
            hit = ((logits.float() > 0) == (y > 0.5)) & known
            return hit.sum().float() / known.sum().clamp(min=1)
        return (logits_to_probs(logits).argmax(1) == y).float().mean()

    def on_validation_epoch_start(self) -> None:  # noqa: D102
        self._val_outputs = []

    def on_validation_epoch_end(self) -> None:
        """val_auc: macro ROC AUC over the findings (multi-label) or the classes, on the whole val split."""
        if not self.track_auc or not self._val_outputs:
            return
        logits = torch.cat([o[0] for o in self._val_outputs]).numpy()
        y = torch.cat([o[1] for o in self._val_outputs]).numpy()
        self._val_outputs = []
        if self.multilabel:
            auc = macro_auc(y, logits)
        else:
            from cxrlab.stats import auc_score

            auc = auc_score(y, logits_to_probs(torch.from_numpy(logits)).numpy())
        # an undefined AUC (one class only) is logged as 0 so that early stopping still has a number
        self.log("val_auc", auc if np.isfinite(auc) else 0.0, on_step=False, on_epoch=True, prog_bar=True)

    def _check_finite(self, loss: torch.Tensor, what: str) -> None:
        """Stop with one line when the loss is NaN or infinite (a diverging run): before any callback sees
        NaN weights (TensorBoard histograms) and before a NaN checkpoint is written."""
        if bool(torch.isfinite(loss.detach()).all()):
            return
        kind = "NaN" if bool(torch.isnan(loss.detach()).any()) else "infinite"
        lr = self.cfg.lr
        where = f"after step {self.global_step}" if what else f"step {self.global_step + 1}"
        raise TrainingDiverged(
            f"the {what}loss became {kind} at epoch {self.current_epoch + 1} ({where}); "
            f"lower the learning rate (now {lr:g}), e.g. --lr {min(lr, 1.0) / 10:g}, or check the images "
            "and labels for NaN"
        )

    def on_train_epoch_start(self) -> None:
        # Frozen layers stay in eval mode: their batch-norm statistics must not drift.
        from cxrlab.models import frozen_modules

        for m in frozen_modules(self.net):
            m.eval()
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True, sync_dist=True)

    def configure_optimizers(self):  # noqa: D102
        params = [p for p in self.net.parameters() if p.requires_grad]
        c = self.cfg
        if c.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        elif c.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        if c.scheduler == "none" and not c.warmup_epochs:
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(total, round(c.warmup_epochs * total / max(1, c.epochs)))
        schedule = lr_schedule(total, warmup, cosine=c.scheduler == "cosine")
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lr_schedule(total: int, warmup: int, cosine: bool):
    """Learning-rate factor per optimizer step: linear warm-up over ``warmup`` steps (from 1/(warmup+1)),
    then constant or cosine decay to 0 at step ``total`` (max_epochs × steps per epoch)."""
    import math

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if not cosine:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor
