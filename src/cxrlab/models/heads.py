"""Classification heads built from :class:`HeadConfig`, and the backbone + head classifier."""

from __future__ import annotations

import math

import torch
from torch import nn

from cxrlab.config import HeadConfig


def dropout_rates(dropout: float | list[float], n_hidden: int) -> list[float]:
    """Dropout rate before each of the ``n_hidden`` dense layers and before the output layer.

    A float applies everywhere; a list gives rate *i* before dense layer *i* (its last rate
    before the output layer), a short list being padded with its last rate — so "dense 256,
    dropout 0.3, dense 1" is ``hidden: [256], dropout: [0.0, 0.3]``.
    """
    rates = list(dropout) if isinstance(dropout, list) else [dropout] * (n_hidden + 1)
    if not rates:
        rates = [0.0]
    return rates + [rates[-1]] * (n_hidden + 1 - len(rates))


class Head(nn.Module):
    """Pooling → optional batch norm → dense stack → output layer.

    In the dense stack each hidden layer is ``[dropout] → linear → [batch norm] → activation``.
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
            width = math.prod(in_shape)
        else:
            pool = nn.AdaptiveAvgPool2d(1) if cfg.pooling == "avg" else nn.AdaptiveMaxPool2d(1)
            self.pool = nn.Sequential(pool, nn.Flatten())
            width = channels
        rates = dropout_rates(cfg.dropout, len(hidden))
        layers: list[nn.Module] = []
        for i, units in enumerate(hidden):
            if rates[i] > 0:
                layers.append(nn.Dropout(rates[i]))
            layers.append(nn.Linear(width, units))
            if cfg.dense_batch_norm:
                layers.append(nn.BatchNorm1d(units))
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
    """A backbone producing features and a :class:`Head` producing logits.

    A backbone offering ``make_aux_head(num_outputs, in_shape)`` and ``forward_aux(x)`` (Inception
    v3) gets an auxiliary classifier: in training mode, while some of the backbone trains, the
    forward pass returns ``(logits, aux_logits)`` (the loss weights the auxiliary part 0.4);
    in eval mode it returns the logits only.
    """

    def __init__(self, backbone: nn.Module, head: Head, name: str = ""):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.name = name
        make_aux = getattr(backbone, "make_aux_head", None)
        self.aux_head: nn.Module | None = (
            make_aux(head.out.out_features, head.in_shape) if callable(make_aux) else None
        )

    def uses_aux(self) -> bool:
        """True when the forward pass returns auxiliary logits (training, part of the backbone trains)."""
        return (
            self.aux_head is not None
            and self.training
            and any(p.requires_grad for p in self.backbone.parameters())
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.uses_aux():
            fmap, aux_in = self.backbone.forward_aux(x)  # type: ignore[operator]
            return self.head(fmap), self.aux_head(aux_in)  # type: ignore[misc]
        return self.head(self.backbone(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations for t-SNE and embeddings."""
        return self.head.features(self.backbone(x))

    def l2_modules(self, where: list[str]) -> list[nn.Module]:
        """Trainable layers an L2 penalty applies to: ``hidden`` dense, ``output``, backbone ``conv``."""
        chosen: list[nn.Module] = []
        if "hidden" in where:
            chosen += [m for m in self.head.body.modules() if isinstance(m, nn.Linear)]
        if "output" in where:
            chosen.append(self.head.out)
        if "conv" in where:
            chosen += [m for m in self.backbone.modules() if isinstance(m, nn.Conv2d)]
        return [m for m in chosen if m.weight.requires_grad]
