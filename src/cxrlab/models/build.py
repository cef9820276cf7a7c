"""Build a registered model: backbone + head, input channels adapted, layers frozen as configured."""

from __future__ import annotations

import torch
from torch import nn

from cxrlab.config import ModelConfig
from cxrlab.errors import ModelError
from cxrlab.models.heads import Classifier, Head
from cxrlab.models.layers import freeze_first_layers
from cxrlab.models.registry import get_spec, resolve_channels
from cxrlab.models.split import freeze_blocks, parse_blocks


def build_model(
    cfg: ModelConfig,
    num_classes: int,
    image_size: int | None = None,
    pretrained: bool | None = None,
) -> Classifier:
    """Build backbone + head for ``num_classes`` (``pretrained`` overrides ``cfg.pretrained``)."""
    spec = get_spec(cfg.name)
    size = image_size or spec.input_size
    use_weights = cfg.pretrained if pretrained is None else pretrained
    backbone = spec.build_backbone(use_weights, cfg)
    channels = resolve_channels(spec, cfg)
    if channels != spec.channels and spec.family != "small":  # small models read cfg.in_channels
        adapt_input_channels(backbone, spec.channels, channels)
    backbone.eval()
    with torch.no_grad():
        shape = tuple(backbone(torch.zeros(2, channels, size, size)).shape[1:])
    if cfg.head.output == "sigmoid" and num_classes != 2:
        raise ModelError(f"head.output=sigmoid needs exactly 2 classes, the data has {num_classes}")
    outputs = 1 if cfg.head.output == "sigmoid" else num_classes
    hidden = cfg.head.hidden if cfg.head.hidden is not None else spec.default_hidden
    head = Head(shape, cfg.head, list(hidden), outputs)
    model = Classifier(backbone, head, spec.name)
    model.train()
    apply_freeze(model, cfg.freeze)
    return model


def apply_freeze(model: Classifier, freeze: str) -> None:
    """``none``: train everything; ``backbone``: train the head only; ``N``: freeze the first N layers;
    ``blocks:K``: freeze the first K backbone blocks (:mod:`cxrlab.models.split`)."""
    for p in model.parameters():
        p.requires_grad_(True)
    if freeze == "none" or freeze == "0":
        return
    if freeze == "backbone":
        model.backbone.requires_grad_(False)
        return
    k = parse_blocks(freeze)
    if k is not None:
        freeze_blocks(model, k)
        return
    freeze_first_layers(model, int(freeze))


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """Modules whose parameters are all frozen: kept in eval mode (batch-norm statistics fixed)."""
    out = []
    for m in model.modules():
        params = list(m.parameters(recurse=False))
        if params and not any(p.requires_grad for p in params):
            out.append(m)
    return out


def adapt_input_channels(backbone: nn.Module, old: int, new: int) -> None:
    """Change the first convolution from ``old`` to ``new`` input channels.

    For 3 → 1 the RGB kernels are summed, so a pretrained network sees a grey image exactly as
    it would see that grey image copied into three channels.
    """
    for parent in backbone.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == old:
                conv = nn.Conv2d(
                    new,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    child.groups,
                    child.bias is not None,
                    child.padding_mode,
                )
                with torch.no_grad():
                    if new == 1:
                        conv.weight.copy_(child.weight.sum(dim=1, keepdim=True))
                    else:
                        conv.weight.copy_(child.weight.mean(dim=1, keepdim=True).expand(-1, new, -1, -1))
                    if child.bias is not None:
                        conv.bias.copy_(child.bias)
                setattr(parent, name, conv)
                return
    raise ModelError(f"cannot find a first convolution with {old} input channels to adapt")
