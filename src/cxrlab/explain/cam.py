"""Class-activation heatmaps for a run's model with pytorch-grad-cam, and their overlays."""

from __future__ import annotations

import copy
import difflib
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrlab._optional import require
from cxrlab.errors import CxrError, ModelError

#: ``--method`` choices → pytorch-grad-cam class names.
METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "eigencam": "EigenCAM",
    "layercam": "LayerCAM",
}


def method_class(method: str):
    """The pytorch-grad-cam class for ``method`` (one line listing the choices otherwise)."""
    key = method.lower().replace("_", "").replace("-", "").replace("plusplus", "++")
    if key not in METHODS:
        raise CxrError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    pytorch_grad_cam = require("pytorch_grad_cam", "explain", "Grad-CAM heatmaps")
    return key, getattr(pytorch_grad_cam, METHODS[key])


def explainable_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for CAM: eval mode, every parameter requiring gradients (so a frozen backbone's
    activations carry them) and no in-place activations (they would overwrite the hooked maps)."""
    net = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
    net.requires_grad_(True)
    for m in net.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    return net


def resolve_layer(model: nn.Module, model_name: str, layer: str | None) -> tuple[str, nn.Module]:
    """``(name, module)`` of the target layer: ``layer`` (a module name as ``print(model)`` nests it, e.g.
    ``backbone.18``), else the model family's ``cam_layer`` from the registry, else the backbone's last
    Conv2d. One line when the name is unknown or the model has no convolution."""
    from cxrlab.models.registry import cam_layer, get_spec

    modules = dict(model.named_modules())
    name = layer if layer is not None else cam_layer(get_spec(model_name), model)
    if name is None:
        raise ModelError(
            f"{model_name} has no convolutional layer: Grad-CAM needs a spatial feature map (use a CNN run)"
        )
    if name not in modules or name == "":
        close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)]
        raise CxrError(
            f"unknown --layer {name!r} in {model_name}; {hint}give a module name such as 'backbone' or "
            f"{convs[-1]!r} (the last convolution)"
            if convs
            else f"unknown --layer {name!r} in {model_name}; {hint}give a module name such as 'backbone'"
        )
    return name, modules[name]


def cam_model(
    model: nn.Module, model_name: str, layer: str | None = None
) -> tuple[nn.Module, str, nn.Module]:
    """``(net, layer name, layer module)`` ready for :func:`heatmaps`: an :func:`explainable_copy` on the CPU
    whose gradients start at the target layer (:func:`resolve_layer`). No parameter requires gradients and a
    forward hook makes the layer's output a fresh leaf that records them, so nothing below the layer enters
    the autograd graph and no weight gradient is computed: the same maps as a whole-network backward (CAM
    methods need only d(score)/d(layer output)) at about the cost of one forward pass."""
    net = explainable_copy(model).cpu()
    name, module = resolve_layer(net, model_name, layer)
    net.requires_grad_(False)
    module.register_forward_hook(_gradients_from_here)
    return net, name, module


def _gradients_from_here(module: nn.Module, inputs: Any, output: Any) -> Any:
    """Forward hook: the layer's output as a leaf that records gradients (registered before pytorch-grad-cam's
    own hooks, which then see this tensor)."""
    if not isinstance(output, torch.Tensor) or not torch.is_grad_enabled():
        return output
    return output.detach().requires_grad_(True)


class LogitTarget:
    """The score CAM explains: logit ``index`` (softmax/multi-label), or ± the single sigmoid logit."""

    def __init__(self, index: int, sigmoid: bool):
        self.index, self.sigmoid = index, sigmoid

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if self.sigmoid:
            return output[..., 0] if self.index == 1 else -output[..., 0]
        return output[..., self.index]


def heatmaps(
    model: nn.Module, layer: nn.Module, method: str, x: torch.Tensor, targets: list[int], sigmoid: bool
) -> np.ndarray:
    """Heatmaps ``(N, H, W)`` in [0, 1] (each scaled to its own maximum) for input ``x`` ``(N, C, H, W)``
    and one target class index per image."""
    _, cls = method_class(method)
    with cls(model=model, target_layers=[layer]) as cam:
        maps = cam(input_tensor=x, targets=[LogitTarget(t, sigmoid) for t in targets])
    if maps.ndim != 3 or maps.shape[1:] != x.shape[2:]:
        raise ModelError(
            f"the target layer gives no spatial heatmap (shape {maps.shape}); choose another --layer"
        )
    return np.nan_to_num(np.maximum(maps, 0.0)).astype(np.float32)


def upsample(a: np.ndarray, size: int | tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """A 2-D array resized to ``size × size`` (or ``(height, width)``)."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    kw: dict[str, Any] = {"align_corners": False} if mode == "bilinear" else {}
    hw = (size, size) if isinstance(size, int) else size
    return torch.nn.functional.interpolate(t, size=hw, mode=mode, **kw)[0, 0].numpy()


def overlay(gray: np.ndarray, cam: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 image: the jet-coloured heatmap blended over the grey radiograph (``gray`` sets the size;
    ``cam`` and ``mask`` are resized to it), the lung mask's outline drawn in white."""
    cam_image = require("pytorch_grad_cam.utils.image", "explain", "Grad-CAM overlays")
    show_cam_on_image = cam_image.show_cam_on_image

    size = gray.shape[0]
    heat = np.clip(upsample(cam, size), 0, 1)
    rgb = np.repeat(gray[..., None].astype(np.float32) / 255.0, 3, axis=2)
    out = show_cam_on_image(rgb, heat, use_rgb=True, image_weight=0.55)
    if mask is not None:
        m = upsample(mask.astype(np.float32), size, "nearest") > 0.5
        inner = m.copy()
        inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
        out[m & ~inner] = 255
    return out
