"""Small models trained from scratch, grayscale by default (``model.in_channels: 3`` for RGB).

* ``mlp`` — flattened 32×32 pixels → 300 → 150 → classes (the head's dense stack; activation,
  batch norm after each dense layer and dropout come from ``model.head``).
* ``cnn5`` — report 003's 5-convolution CNN of the 32×32 experiments: filters
  64-128-128-256-256 × ``model.width``, each conv 3×3 → ReLU → [dropout] → [batch norm, per
  channel or per row] and max-pool after convs 1, 3 and 5; dense 512-128-classes in the head;
  L2 on the convolutions with ``head.l2_layers: [conv]``.
* ``pneumonia_cnn`` / ``pneumonia_cnn_improved`` — the "CNN" and "improved CNN" for 224 px
  grayscale pneumonia (Kermany).
* ``alexnet_base`` / ``alexnet_improved`` — AlexNet-style networks for 1-channel 224 px input.
* ``small_cnn`` — a compact 4-block CNN for quick runs.
"""

from __future__ import annotations

import torch
from torch import nn

from cxrlab.config import ModelConfig
from cxrlab.models.registry import GRAY_MEAN, GRAY_STD, ModelSpec, register


def _channels(cfg: ModelConfig) -> int:
    return cfg.in_channels or 1


def _conv_block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _small_cnn(pretrained: bool, cfg: ModelConfig) -> nn.Module:
    """Four conv-BN-ReLU blocks (32-64-128-256 × width), max-pooling between them."""
    widths = [max(4, int(round(w * cfg.width))) for w in (32, 64, 128, 256)]
    layers: list[nn.Module] = []
    cin = _channels(cfg)
    for i, w in enumerate(widths):
        layers += _conv_block(cin, w)
        if i < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
        cin = w
    return nn.Sequential(*layers)


def _flatten(pretrained: bool, cfg: ModelConfig) -> nn.Module:
    return nn.Flatten()


class RowBatchNorm(nn.Module):
    """Batch norm over image rows instead of channels: one (γ, β, mean, variance) per row.

    What Keras' ``BatchNormalization(axis=1)`` does to a channels-last (N, H, W, C) map — the
    layout of report 003's CNN, whose printed counts (128 for a 32 × 32 × 64 map, 64 at 16 × 16,
    32 at 8 × 8) are 4 × the number of rows. The row count is taken from the first input.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.LazyBatchNorm2d()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.transpose(1, 2)).transpose(1, 2)


_CNN5_POOL_AFTER = (0, 2, 4)  # report 003: max-pooling after convs 1, 3 and 5 → 256 × 4 × 4 at 32 px


def _cnn5(pretrained: bool, cfg: ModelConfig) -> nn.Module:
    """Report 003's CNN: five 3×3 same-padded convs, 64-128-128-256-256 filters × ``cfg.width``.

    Each conv → ReLU → [dropout] → [batch norm] and max-pool 2 after convs 1, 3 and 5, in the
    order of report 003's printed layer table (flatten 4,096 at 32 px).
    """
    widths = [max(1, int(round(w * cfg.width))) for w in (64, 128, 128, 256, 256)]
    layers: list[nn.Module] = []
    cin = _channels(cfg)
    for i, w in enumerate(widths):
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.ReLU(inplace=True)]
        if cfg.conv_dropout > 0:
            layers.append(nn.Dropout(cfg.conv_dropout))
        if cfg.conv_batch_norm:
            layers.append(RowBatchNorm() if cfg.conv_batch_norm_axis == "rows" else nn.BatchNorm2d(w))
        if i in _CNN5_POOL_AFTER:
            layers.append(nn.MaxPool2d(2))
        cin = w
    return nn.Sequential(*layers)


def _pneumonia_cnn(pretrained: bool, cfg: ModelConfig) -> nn.Module:
    """Keras-tutorial CNN: four valid 3×3 conv + ReLU + 2×2 max-pool blocks, 32-64-128-128 filters."""
    layers: list[nn.Module] = []
    cin = _channels(cfg)
    for w in (32, 64, 128, 128):
        layers += [nn.Conv2d(cin, w, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        cin = w
    return nn.Sequential(*layers)  # 128 × 12 × 12 at 224 px


def _pneumonia_cnn_improved(pretrained: bool, cfg: ModelConfig) -> nn.Module:
    """Five same-padded conv-BN-ReLU-max-pool blocks, 32-64-128-128-256 filters."""
    layers: list[nn.Module] = []
    cin = _channels(cfg)
    for w in (32, 64, 128, 128, 256):
        layers += _conv_block(cin, w) + [nn.MaxPool2d(2)]
        cin = w
    return nn.Sequential(*layers)  # 256 × 7 × 7 at 224 px


def _alexnet_base(pretrained: bool, cfg: ModelConfig) -> nn.Module:
    """AlexNet's convolutions (64/192/384/256/256, as torchvision's) on 1-channel input."""
    c = _channels(cfg)
    return nn.Sequential(
        nn.Conv2d(c, 64, 11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.AdaptiveAvgPool2d(6),
    )  # 256 × 6 × 6


def _alexnet_improved(pretrained: bool, cfg: ModelConfig) -> nn.Module:
    """Report 004's printed ``ImprovedAlexNet.features``: conv 32 (11×11/4), 64 (5×5), 128 (3×3),
    each → ReLU → max-pool 3/2 (no batch norm), then adaptive average pooling to 6 × 6."""
    c = _channels(cfg)
    layers: list[nn.Module] = []
    for cin, cout, k, s, p in ((c, 32, 11, 4, 2), (32, 64, 5, 1, 2), (64, 128, 3, 1, 1)):
        layers += [nn.Conv2d(cin, cout, k, stride=s, padding=p), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2)]
    layers.append(nn.AdaptiveAvgPool2d(6))
    return nn.Sequential(*layers)  # 128 × 6 × 6


def _small(name: str, builder, size: int, feature_dim: int, description: str, hidden: list[int]) -> None:
    register(
        ModelSpec(
            name,
            builder,
            size,
            channels=1,
            mean=GRAY_MEAN,
            std=GRAY_STD,
            default_hidden=hidden,
            family="small",
            description=description,
            cam_layer=None if builder is _flatten else "backbone",  # mlp: no convolution to explain
            feature_dim=feature_dim,
        )
    )


_small("small_cnn", _small_cnn, 64, 256, "compact CNN from scratch: 4 conv blocks, global pooling", [])
_small("mlp", _flatten, 32, 1024, "MLP on flattened 32×32 pixels: 1024 → 300 → 150 → classes", [300, 150])
_small(
    "cnn5",
    _cnn5,
    32,
    256,
    "5-conv CNN, 32×32: filters 64-128-128-256-256 × width, dense 512-128",
    [512, 128],
)
_small(
    "pneumonia_cnn",
    _pneumonia_cnn,
    224,
    128,
    'the pneumonia "CNN", 224 px grey: conv 32-64-128-128, dense 512',
    [512],
)
_small(
    "pneumonia_cnn_improved",
    _pneumonia_cnn_improved,
    224,
    256,
    'the "improved CNN", 224 px grey: 5 conv-BN blocks 32-…-256, dense 256',
    [256],
)
_small(
    "alexnet_base",
    _alexnet_base,
    224,
    256,
    "AlexNet-style base, 224 px grey: conv 64/192/384/256/256, dense 4096-4096",
    [4096, 4096],
)
_small(
    "alexnet_improved",
    _alexnet_improved,
    224,
    128,
    "report 004's improved AlexNet, 224 px grey: conv 32/64/128, dense 1024-512",
    [1024, 512],
)
