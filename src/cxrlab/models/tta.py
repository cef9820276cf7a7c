"""Test-time augmentation: the model averaged over the image and four shifted copies of it.

A shift moves the whole radiograph by ``shift`` pixels up, down, left or right; the strip it uncovers
repeats the edge pixels (no black border the model never saw in training). Averaging the penultimate
features is averaging the logits, since the output layer is linear. Nothing is flipped: heart and lungs
are not mirror-symmetric.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def shift_pixels(fraction: float, image_size: int) -> int:
    """``eval.tta_shift`` (a fraction of the image side) in whole pixels at ``image_size``."""
    return round(fraction * image_size)


def shifted_views(x: torch.Tensor, shift: int) -> list[torch.Tensor]:
    """``x`` ``(N, C, H, W)`` and its four copies moved by ``shift`` pixels (edges repeated)."""
    if shift <= 0:
        return [x]
    h, w = x.shape[-2], x.shape[-1]
    s = shift
    padded = F.pad(x, (s, s, s, s), mode="replicate")
    # the window at (top, left) of the padded image; (s, s) is x itself
    corners = [(s, s), (0, s), (2 * s, s), (s, 0), (s, 2 * s)]
    return [padded[..., top : top + h, left : left + w] for top, left in corners]


class ShiftAverage(nn.Module):
    """A classifier (eval mode) averaged over :func:`shifted_views`; same ``features`` /
    ``head`` / ``forward`` interface, so inference, the service and the exporters use it unchanged."""

    def __init__(self, model: nn.Module, shift: int):
        super().__init__()
        self.model = model
        self.shift = shift

    @property
    def head(self) -> nn.Module:
        return self.model.head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        views = shifted_views(x, self.shift)
        total = self.model.features(views[0])
        for view in views[1:]:
            total = total + self.model.features(view)
        return total / len(views)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.head.out(self.features(x))


def with_tta(model: nn.Module, shift: int) -> nn.Module:
    """``model`` itself when ``shift`` is 0, else the model averaged over shifted copies."""
    return ShiftAverage(model, shift) if shift > 0 else model
