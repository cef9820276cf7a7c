"""One registry of models: name → builder + default cfg (input size, channels, mean/std, weights).

Every model is a :class:`~cxrlab.models.heads.Classifier`: a *backbone* that maps images to a
feature map (or vector) and a configurable *head*. Register new models with :func:`register`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cxrlab.config import ModelConfig
from cxrlab.errors import ModelError
from cxrlab.models.heads import Classifier, Head

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (0.5,)
GRAY_STD = (0.25,)

#: builder(pretrained, cfg) -> backbone module mapping (N, C, H, W) to features
BackboneBuilder = Callable[[bool, ModelConfig], nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """Default configuration of a registered model."""

    name: str
    build_backbone: BackboneBuilder
    input_size: int
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    weights: str | None = None  # torchvision weights enum member, e.g. "MobileNet_V2_Weights.IMAGENET1K_V1"
    default_hidden: list[int] = field(default_factory=list)
    family: str = "torchvision"
    description: str = ""
    feature_dim: int | None = None  # channels of the backbone's output at the default input size


REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model to the registry (name must be new)."""
    if spec.name in REGISTRY:
        raise ValueError(f"model {spec.name!r} registered twice")
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    """Look a model up by name; unknown names get a one-line error listing the choices."""
    _ensure_loaded()
    if name in REGISTRY:
        return REGISTRY[name]
    if name.startswith("timm/"):  # any timm model, built on demand
        from cxrlab.models.timm_models import timm_spec

        return timm_spec(name)
    import difflib

    close = difflib.get_close_matches(name, list(REGISTRY), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ModelError(f"unknown model {name!r}; {hint}see `cxr models` ({', '.join(sorted(REGISTRY))})")


def model_names() -> list[str]:
    """All registered model names."""
    _ensure_loaded()
    return list(REGISTRY)


def _ensure_loaded() -> None:
    # Importing the modules registers their models.
    from cxrlab.models import codes, small, zoo  # noqa: F401


def resolve_channels(spec: ModelSpec, cfg: ModelConfig) -> int:
    """Input channels: the config's, else the model's default."""
    return cfg.in_channels or spec.channels


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
    """``none``: train everything; ``backbone``: train the head only; ``N``: freeze the first N layers."""
    for p in model.parameters():
        p.requires_grad_(True)
    if freeze == "none" or freeze == "0":
        return
    if freeze == "backbone":
        model.backbone.requires_grad_(False)
        return
    from cxrlab.models.layers import freeze_first_layers

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


# --------------------------------------------------------------------------- torchvision weights


def torch_home() -> Path:
    """Where torchvision looks for checkpoints (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_file(weights: str) -> tuple[object, str]:
    """The torchvision weights enum member and its checkpoint file name."""
    import torchvision.models as tvm

    enum_name, member = weights.split(".")
    entry = getattr(getattr(tvm, enum_name), member)
    return entry, os.path.basename(entry.url)


def weights_available(weights: str | None) -> bool:
    """True when the checkpoint is already on disk (no download needed)."""
    if not weights:
        return False
    _, filename = weights_file(weights)
    return (torch_home() / filename).is_file()


def _network_reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_torchvision_weights(weights: str) -> object:
    """Return the weights enum member, failing in seconds (not hanging) when it cannot be had."""
    entry, filename = weights_file(weights)
    if (torch_home() / filename).is_file():
        return entry
    from urllib.parse import urlparse

    host = urlparse(entry.url).hostname or "download.pytorch.org"
    if os.environ.get("CXRLAB_OFFLINE") or not _network_reachable(host):
        raise ModelError(
            f"pretrained weights {filename} are not in {torch_home()} and {host} cannot be reached; "
            f"download {entry.url} into that folder (or set TORCH_HOME), or train without --pretrained"
        )
    return entry
