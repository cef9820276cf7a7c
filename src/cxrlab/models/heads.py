"""Classification heads built from :class:`HeadConfig`, and the backbone + head classifier."""

from __future__ import annotations

import torch
from torch import nn

from cxrlab.config import HeadConfig


class Head(nn.Module):
    """Pooling → optional batch norm → dense stack → output layer.

    ``features(x)`` returns the penultimate activations (used for t-SNE).
    """

    def __init__(self, in_shape: tuple[int, ...], cfg: HeadConfig, hidden: list[int], num_outputs: int):
        super().__init__()
        channels = in_shape[0]
        spatial = len(in_shape) == 3
        self.norm = (
            nn.BatchNorm2d(channels)
            if cfg.batch_norm and spatial
            else (nn.BatchNorm1d(channels) if cfg.batch_norm else nn.Identity())
        )
        if not spatial or cfg.pooling == "flatten":
            self.pool: nn.Module = nn.Flatten()
            width = int(torch.tensor(in_shape).prod())
        else:
            pool = nn.AdaptiveAvgPool2d(1) if cfg.pooling == "avg" else nn.AdaptiveMaxPool2d(1)
            self.pool = nn.Sequential(pool, nn.Flatten())
            width = channels
        rates = cfg.dropout if isinstance(cfg.dropout, list) else [cfg.dropout] * (len(hidden) + 1)
        if len(rates) < len(hidden) + 1:
            rates = rates + [rates[-1]] * (len(hidden) + 1 - len(rates))
        layers: list[nn.Module] = []
        for i, units in enumerate(hidden):
            if rates[i] > 0:
                layers.append(nn.Dropout(rates[i]))
            layers.append(nn.Linear(width, units))
            layers.append(nn.LeakyReLU(cfg.leaky_slope) if cfg.activation == "leaky_relu" else nn.ReLU())
            width = units
        if rates[len(hidden)] > 0:
            layers.append(nn.Dropout(rates[len(hidden)]))
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, num_outputs)
        self.in_shape = in_shape
        self.feature_dim = width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (the input of the output layer)."""
        return self.body(self.pool(self.norm(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


class Classifier(nn.Module):
    """A backbone producing features and a :class:`Head` producing logits."""

    def __init__(self, backbone: nn.Module, head: Head, name: str = ""):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations for t-SNE and embeddings."""
        return self.head.features(self.backbone(x))
