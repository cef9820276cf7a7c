"""cxrlab.models: one registry that model families register into, and the builder.

Importing this package loads every family (torchvision zoo, the reports' small networks, codes models,
torchxrayvision's chest-X-ray networks, timm on demand), so :func:`get_spec` and :func:`model_names` see
them all.
"""

from cxrlab.models import codes, small, timm_models, xrv, zoo  # noqa: F401 - importing registers the families
from cxrlab.models.build import adapt_input_channels, apply_freeze, build_model, frozen_modules
from cxrlab.models.registry import ModelSpec, get_spec, model_names, register, resolve_channels
from cxrlab.models.weights import load_torchvision_weights, weights_available

__all__ = [
    "ModelSpec",
    "adapt_input_channels",
    "apply_freeze",
    "build_model",
    "frozen_modules",
    "get_spec",
    "load_torchvision_weights",
    "model_names",
    "register",
    "resolve_channels",
    "weights_available",
]
