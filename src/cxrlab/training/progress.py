"""The training loop's progress bar: Lightning's tqdm bar, drawn where cxrlab's other bars are.

Lightning's default bar (Rich's when installed, else tqdm's) writes to stdout whether or not it is a
terminal, and counts epochs from 0 ("Epoch 19/19" for the last of 20). :class:`EpochBar` writes to stderr,
only where :func:`cxrlab.runtime.show_progress` allows (not with ``-q``, not when stderr is no TTY), and
says "Epoch 20/20".
"""

from __future__ import annotations

import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf

from cxrlab.runtime import show_progress


class EpochBar(TQDMProgressBar):
    """One bar per run on stderr: "Epoch 3/20: 40%| 4/10 [...] train_loss=…", epochs counted from 1 of
    the run's maximum; validation gets a second, transient bar."""

    def init_train_tqdm(self) -> Tqdm:  # noqa: D102
        return Tqdm(desc="Epoch", position=2 * self.process_position, disable=self.is_disabled, leave=True,
                    dynamic_ncols=True, file=sys.stderr, smoothing=0, bar_format=self.BAR_FORMAT)  # fmt: skip

    def init_validation_tqdm(self) -> Tqdm:  # noqa: D102
        return Tqdm(desc=self.validation_description, position=2 * self.process_position + 1,
                    disable=self.is_disabled, leave=False, dynamic_ncols=True, file=sys.stderr,
                    bar_format=self.BAR_FORMAT)  # fmt: skip

    def init_sanity_tqdm(self) -> Tqdm:  # noqa: D102
        return Tqdm(desc=self.sanity_check_description, position=2 * self.process_position,
                    disable=self.is_disabled, leave=False, dynamic_ncols=True, file=sys.stderr,
                    bar_format=self.BAR_FORMAT)  # fmt: skip

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:  # noqa: D102
        # Lightning's own sets "Epoch {0-based}" first, which the terminal would show for a moment
        bar = self.train_progress_bar
        bar.reset(total=convert_inf(self.total_train_batches))
        bar.initial = 0
        bar.set_description(epoch_text(trainer.current_epoch, trainer.max_epochs))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:  # noqa: D102
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version: always "" in a run folder
        return metrics


def epoch_text(current_epoch: int, max_epochs: int | None) -> str:
    """Lightning's 0-based ``current_epoch`` as people count: "Epoch 1/20" … "Epoch 20/20"."""
    done = current_epoch + 1
    return f"Epoch {done}/{max_epochs}" if max_epochs and max_epochs > 0 else f"Epoch {done}"


def progress_bar(progress: bool) -> tuple[bool, list[L.Callback]]:
    """``(enable_progress_bar, callbacks)`` for a Trainer: the :class:`EpochBar` where bars are drawn
    (``progress`` and stderr a terminal), else no bar at all."""
    if not show_progress(not progress):
        return False, []
    return True, [EpochBar()]
