"""Small models trained from scratch: an MLP and a compact CNN (grayscale by default)."""

from __future__ import annotations

from torch import nn

from cxrlab.config import ModelConfig
from cxrlab.models.registry import GRAY_MEAN, GRAY_STD, ModelSpec, register


def _conv_block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _small_cnn(pretrained: bool, cfg: ModelConfig) -> nn.Module:
    """Four conv-BN-ReLU blocks (32-64-128-256 × width), max-pooling between them."""
    widths = [max(4, int(round(w * cfg.width))) for w in (32, 64, 128, 256)]
    layers: list[nn.Module] = []
    cin = cfg.in_channels or 1
    for i, w in enumerate(widths):
        layers += _conv_block(cin, w)
        if i < len(widths) - 1:
            layers.append(nn.MaxPool2d(2))
        cin = w
    return nn.Sequential(*layers)


def _flatten(pretrained: bool, cfg: ModelConfig) -> nn.Module:
    return nn.Flatten()


register(
    ModelSpec(
        "small_cnn",
        _small_cnn,
        64,
        channels=1,
        mean=GRAY_MEAN,
        std=GRAY_STD,
        family="small",
        description="compact CNN from scratch: 4 conv blocks, global pooling",
    )
)
register(
    ModelSpec(
        "mlp",
        _flatten,
        32,
        channels=1,
        mean=GRAY_MEAN,
        std=GRAY_STD,
        default_hidden=[300, 150],
        family="small",
        description="MLP on flattened pixels: 1024 → 300 → 150 → classes",
    )
)
