"""A tiny U-Net for grey radiographs: one input channel, one output logit per pixel (lung or not)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyUNet(nn.Module):
    """Encoder widths ``base × (1, 2, 4, 8)``, three 2× down/up steps with skip connections.

    Input ``(N, 1, S, S)`` with S divisible by 8, normalised as ``(x / 255 - 0.5) / 0.25``;
    output ``(N, 1, S, S)`` logits.
    """

    def __init__(self, base: int = 8):
        super().__init__()
        w = [base, base * 2, base * 4, base * 8]
        self.base = base
        self.enc = nn.ModuleList(
            [_block(1, w[0]), _block(w[0], w[1]), _block(w[1], w[2]), _block(w[2], w[3])]
        )
        self.up = nn.ModuleList([nn.ConvTranspose2d(w[i + 1], w[i], 2, stride=2) for i in range(3)])
        self.dec = nn.ModuleList([_block(w[i] * 2, w[i]) for i in range(3)])
        self.out = nn.Conv2d(w[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, enc in enumerate(self.enc):
            x = enc(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for i in (2, 1, 0):
            x = self.dec[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.out(x)
