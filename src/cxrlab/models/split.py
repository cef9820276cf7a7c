"""Block-level split of a backbone: a frozen prefix and a trainable suffix (partial fine-tuning).

A model family whose backbone is a chain of blocks registers a *split function*
(``ModelSpec.blocks``): ``blocks(backbone)`` returns the blocks in order, such that running them one
after the other gives exactly ``backbone(x)``. Then

* ``model.freeze: "blocks:K"`` (``--freeze blocks:K``) freezes the first K blocks — for MobileNetV2,
  ``blocks:14`` is torchvision's ``features[:14]``;
* with ``model.freeze: N`` (Keras-style layer count) the frozen prefix is the longest run of leading
  blocks whose parameters are all frozen; a block frozen only in part belongs to the suffix.

The training loop (:mod:`cxrlab.training.features`) runs the frozen prefix once, caches its output
and trains :class:`SuffixNet` (suffix blocks + head) on the cached tensors.

Split functions: torchvision MobileNetV2/V3, EfficientNet, VGG (``.features`` children), ResNets
(stem layers and ``layer1``…``layer4``), DenseNet-121 (``features`` children and the final ReLU);
timm ResNets, EfficientNets and MobileNetV3 (``forward_features`` is their block chain). Others
(Inception v3 with its auxiliary branch, GoogLeNet, AlexNet, the small CNNs, other timm models)
have none: ``blocks:K`` is refused for them in one line.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from cxrlab.errors import ModelError

BLOCKS_RE = re.compile(r"^blocks:(\d+)$")


def parse_blocks(freeze: str) -> int | None:
    """K for ``blocks:K``, else None."""
    m = BLOCKS_RE.match(freeze)
    return int(m.group(1)) if m else None


def sequential_blocks(backbone: nn.Module) -> list[nn.Module]:
    """An ``nn.Sequential`` backbone: its children (torchvision ``.features``, ResNet stem + stages)."""
    return list(backbone.children())


def densenet_blocks(backbone: nn.Module) -> list[nn.Module]:
    """cxrlab's DenseNet backbone ``Sequential(features, ReLU)``: the ``features`` children, then the ReLU."""
    features, relu = backbone[0], backbone[1]  # type: ignore[index]
    return [*features.children(), relu]


def timm_blocks(backbone: nn.Module) -> list[nn.Module] | None:
    """timm models whose ``forward_features`` is a plain chain of submodules; None for the others."""
    net = getattr(backbone, "net", None)
    kind = type(net).__name__
    if kind == "ResNet":
        return [net.conv1, net.bn1, net.act1, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4]
    if kind == "EfficientNet":
        return [net.conv_stem, net.bn1, *net.blocks, net.conv_head, net.bn2]
    if kind == "MobileNetV3":
        return [net.conv_stem, net.bn1, *net.blocks]
    return None


def backbone_blocks(model: nn.Module) -> list[nn.Module] | None:
    """The backbone's blocks in order (via the registered split function), or None without one."""
    from cxrlab.models.registry import get_spec

    name = getattr(model, "name", "")
    spec = get_spec(name) if name else None
    if spec is None or spec.blocks is None:
        return None
    return spec.blocks(model.backbone)  # type: ignore[union-attr]


def freeze_blocks(model: nn.Module, k: int) -> int:
    """Freeze the parameters of the first ``k`` backbone blocks; returns the number of blocks."""
    blocks = backbone_blocks(model)
    name = getattr(model, "name", "?")
    if blocks is None:
        raise ModelError(
            f"--freeze blocks:{k}: {name} has no block split (MobileNets, ResNets, DenseNet-121, "
            "EfficientNet, VGG, timm ResNet/EfficientNet/MobileNetV3 have one); use --freeze N (layers)"
        )
    if k > len(blocks):
        raise ModelError(
            f"--freeze blocks:{k}: {name}'s backbone has {len(blocks)} blocks; "
            f"choose 0…{len(blocks)} (see docs/models.md, partial fine-tuning)"
        )
    for block in blocks[:k]:
        block.requires_grad_(False)
    return len(blocks)


def frozen_prefix(model: nn.Module) -> int:
    """How many leading backbone blocks are entirely frozen (0 without a split function, or when none of
    their parameters is frozen): the part that can run once and be cached."""
    blocks = backbone_blocks(model)
    if blocks is None:
        return 0
    k = 0
    any_frozen = False
    for block in blocks:
        params = list(block.parameters())
        if any(p.requires_grad for p in params):
            break
        any_frozen = any_frozen or bool(params)
        k += 1
    return k if any_frozen else 0


class SuffixNet(nn.Module):
    """The trainable part: backbone blocks ``k…`` and the head, fed with the prefix's cached (fp16)
    activations. Its modules are the classifier's own, so training it trains the full model."""

    def __init__(self, blocks: list[nn.Module], head: nn.Module):
        super().__init__()
        self.suffix = nn.Sequential(*blocks)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.suffix(x.float()))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations."""
        return self.head.features(self.suffix(x.float()))


def split_model(model: nn.Module, k: int) -> tuple[nn.Sequential, SuffixNet]:
    """``(prefix, suffix + head)`` of a classifier split after backbone block ``k``."""
    blocks = backbone_blocks(model)
    if blocks is None:
        raise ModelError(f"{getattr(model, 'name', '?')} has no block split")
    return nn.Sequential(*blocks[:k]), SuffixNet(blocks[k:], model.head)  # type: ignore[arg-type]
