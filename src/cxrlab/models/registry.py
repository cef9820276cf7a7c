"""One registry of models: name → builder + default cfg (input size, channels, mean/std, weights).

A leaf module: model families (:mod:`~cxrlab.models.zoo`, :mod:`~cxrlab.models.small`,
:mod:`~cxrlab.models.codes`, :mod:`~cxrlab.models.timm_models`, :mod:`~cxrlab.models.xrv`) import it and
register into it, as timm's ``@register_model`` does; importing :mod:`cxrlab.models` loads them all.
Building a model from a spec is :func:`cxrlab.models.build.build_model`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from cxrlab.config import ModelConfig
from cxrlab.errors import ModelError

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
    #: Grad-CAM target: a module name of the built Classifier (``"backbone"``: its last feature map);
    #: None = the backbone's last Conv2d (:func:`cam_layer`)
    cam_layer: str | None = None
    #: split function: backbone -> its blocks in order (their chain is the backbone), or None where the
    #: family has no clean split; used by ``freeze: blocks:K`` and partial fine-tuning (models/split.py)
    blocks: Callable[[nn.Module], list[nn.Module] | None] | None = None
    #: what the family's pretrained weights were trained on, when not ImageNet (e.g. chest radiographs)
    pretrained_on: str = ""
    #: the pip extra the family needs (``pip install 'cxrlab[EXTRA]'``), or None for the base install
    extra: str | None = None
    #: families with their own weight cache (not torchvision's): True when the pretrained weights are on
    #: disk, None when that cannot be told (the family's package is missing)
    weights_cached: Callable[[], bool | None] | None = None
    #: families with their own weight cache: fail within seconds, in one line, when ``--pretrained`` weights
    #: are neither on disk nor downloadable (called before any image is decoded)
    ensure_weights: Callable[[], None] | None = None


REGISTRY: dict[str, ModelSpec] = {}
#: name prefix → function building a spec on demand (e.g. ``timm/`` → any timm model)
RESOLVERS: dict[str, Callable[[str], ModelSpec]] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a model to the registry (name must be new)."""
    if spec.name in REGISTRY:
        raise ValueError(f"model {spec.name!r} registered twice")
    REGISTRY[spec.name] = spec
    return spec


def register_resolver(prefix: str, resolve: Callable[[str], ModelSpec]) -> None:
    """Let names starting with ``prefix`` be resolved on demand by ``resolve(name)``."""
    RESOLVERS[prefix] = resolve


def get_spec(name: str) -> ModelSpec:
    """Look a model up by name; unknown names get a one-line error listing the choices."""
    if name in REGISTRY:
        return REGISTRY[name]
    for prefix, resolve in RESOLVERS.items():
        if name.startswith(prefix):
            return resolve(name)
    close = difflib.get_close_matches(name, list(REGISTRY), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ModelError(f"unknown model {name!r}; {hint}see `cxr models` ({', '.join(sorted(REGISTRY))})")


def model_names() -> list[str]:
    """All registered model names."""
    return list(REGISTRY)


def resolve_channels(spec: ModelSpec, cfg: ModelConfig) -> int:
    """Input channels: the config's, else the model's default."""
    return cfg.in_channels or spec.channels


def cam_layer(spec: ModelSpec, model: nn.Module) -> str | None:
    """The module name Grad-CAM hooks for a model of ``spec``: the family's ``cam_layer``, else the last
    ``Conv2d`` of ``model.backbone`` (None when the backbone has no convolution)."""
    if spec.cam_layer:
        return spec.cam_layer
    convs = [n for n, m in model.named_modules() if n.startswith("backbone.") and isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None
