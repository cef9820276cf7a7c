"""``code_cnn``: a CNN for autoencoder codes (``cxr autoencoder encode``), not for images.

The Kermany report trained its CNN on the 256×14×14 codes of a convolutional autoencoder
instead of 224×224 radiographs. This is that CNN adjusted to code input: three conv-BN-ReLU
blocks (64-64-128 × width, one 2×2 max-pool: 14×14 → 7×7), then the usual configurable head
(global average pooling, a 64-unit dense layer, dropout). Input channels and size follow the
codes (``model.in_channels``, ``data.image_size``; ``cxr train`` sets both from the codes file;
other channel counts than 256 go through the registry's first-convolution adaptation).
"""

from __future__ import annotations

import torch
from torch import nn

from cxrlab.config import ModelConfig
from cxrlab.models.registry import ModelSpec, register

#: Channels of the default codes (the report's encoder ends with 256 channels at 14×14).
CODE_CHANNELS = 256
CODE_SIZE = 14


class ToFloat32(nn.Module):
    """Codes are stored as float16; compute in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


def _code_cnn(pretrained: bool, cfg: ModelConfig) -> nn.Module:
    w1, w2, w3 = (max(8, int(round(w * cfg.width))) for w in (64, 64, 128))

    def block(a: int, b: int) -> list[nn.Module]:
        return [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]

    layers = [ToFloat32(), *block(CODE_CHANNELS, w1), *block(w1, w2), nn.MaxPool2d(2), *block(w2, w3)]
    return nn.Sequential(*layers)


register(
    ModelSpec(
        "code_cnn",
        _code_cnn,
        CODE_SIZE,
        channels=CODE_CHANNELS,
        mean=(0.0,),
        std=(1.0,),
        default_hidden=[64],
        family="codes",
        description="CNN on 256×14×14 autoencoder codes (--data CODES from `cxr autoencoder encode`)",
    )
)
