"""The one Grad-CAM engine: :class:`CamEngine`, a run's model prepared for a method of the registry
(:mod:`cxrlab.explain.methods`, pytorch-grad-cam's classes), which every heatmap in cxrlab comes from —
``cxr explain``, the report's gallery and lung-attention score, ``cxr predict --explain`` and
``cxr serve --heatmaps``; and overlays.

Heatmaps are computed in fp32 on the CPU whatever the run trained in (no autocast)."""

from __future__ import annotations

import copy
import difflib
import threading
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrlab.errors import CxrError, ModelError
from cxrlab.explain.methods import DEFAULT_METHOD, get_method


def explainable_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for CAM: fp32, eval mode, every parameter requiring gradients (so a frozen
    backbone's activations carry them) and no in-place activations (they would overwrite the hooked maps)."""
    net = copy.deepcopy(model).float().eval().to(memory_format=torch.contiguous_format)
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
    """``(net, layer name, layer module)``: an :func:`explainable_copy` on the CPU whose gradients start at
    the target layer (:func:`resolve_layer`). No parameter requires gradients and a forward hook makes the
    layer's output a fresh leaf that records them, so nothing below the layer enters the autograd graph and
    no weight gradient is computed: the same maps as a whole-network backward (CAM methods need only
    d(score)/d(layer output)) at about the cost of one forward pass."""
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


class CamEngine:
    """A run's model prepared for one CAM method: the gradient-enabled fp32 copy (:func:`cam_model`), the
    target layer, the run's input normalisation and how its logits map to classes. Calling it gives the
    heatmaps of uint8 images; one batch at a time (the CAM hooks sit on one network), so one engine can
    serve several threads."""

    #: Images per pytorch-grad-cam call.
    CHUNK = 16

    def __init__(
        self,
        model: nn.Module,
        model_name: str,
        meta: dict[str, Any],
        method: str = DEFAULT_METHOD,
        layer: str | None = None,
    ):
        self.method = get_method(method)
        self.method.cam_class()  # a missing grad-cam package: one line before the model is copied
        self.net, self.layer_name, self.layer = cam_model(model, model_name, layer)
        self.channels = int(meta["channels"])
        self.mean, self.std = tuple(meta["mean"]), tuple(meta["std"])
        self.size = int(meta["image_size"])
        self.multilabel = meta.get("task") == "multilabel"
        #: one logit for two classes: class 1 is +logit, class 0 is -logit
        self.sigmoid = model.head.out.out_features == 1 and not self.multilabel
        self._lock = threading.Lock()

    @classmethod
    def for_run(cls, loaded: Any, method: str = DEFAULT_METHOD, layer: str | None = None) -> CamEngine:
        """The engine for a loaded run (:class:`cxrlab.evaluation.inference.LoadedRun`)."""
        return cls(loaded.model, loaded.cfg.model.name, loaded.meta, method, layer)

    def tensor(self, images: np.ndarray) -> torch.Tensor:
        """The fp32 model input ``(N, C, H, W)``, normalised as in training, of uint8 images ``(N, H, W)``."""
        from cxrlab.data.prepare import to_tensor

        return to_tensor(np.asarray(images), self.channels, self.mean, self.std)

    def __call__(self, images: np.ndarray, targets: list[int]) -> np.ndarray:
        """Heatmaps ``(N, H, W)`` in [0, 1] for uint8 images ``(N, H, W)`` in the run's input geometry, each
        for its class index in ``targets``."""
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        out = [
            self.maps(self.tensor(images[i : i + self.CHUNK]), list(targets[i : i + self.CHUNK]))
            for i in range(0, len(images), self.CHUNK)
        ]
        return np.concatenate(out) if out else np.zeros((0, *np.shape(images)[1:]), np.float32)

    def maps(self, x: torch.Tensor, targets: list[int]) -> np.ndarray:
        """Heatmaps ``(N, H, W)`` in [0, 1] (each scaled to its own maximum by pytorch-grad-cam) for an input
        tensor ``x`` ``(N, C, H, W)``, in fp32 (no autocast)."""
        cls = self.method.cam_class()
        targets_ = [LogitTarget(int(t), self.sigmoid) for t in targets]
        with (
            self._lock,
            torch.autocast("cpu", enabled=False),
            cls(model=self.net, target_layers=[self.layer]) as cam,
        ):
            maps = cam(input_tensor=x.float(), targets=targets_)
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
    from cxrlab._optional import require

    show_cam_on_image = require("pytorch_grad_cam.utils.image", "explain", "heatmaps").show_cam_on_image
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
