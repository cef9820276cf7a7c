"""What counts as a "layer" when freezing the first N layers."""

from __future__ import annotations

from torch import nn


def countable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules that hold parameters, in definition order (conv, linear, batch norm …)."""
    return [
        (n, m)
        for n, m in model.named_modules()
        if not list(m.children()) and list(m.parameters(recurse=False))
    ]


def freeze_first_layers(model: nn.Module, n: int) -> None:
    """Freeze the first ``n`` parameterised leaf layers of the backbone."""
    backbone = getattr(model, "backbone", model)
    for _, module in countable_layers(backbone)[:n]:
        module.requires_grad_(False)
