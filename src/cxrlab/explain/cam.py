"""The one Grad-CAM engine: :class:`CamEngine`, a run's model prepared for a method of the registry
(:mod:`cxrlab.explain.methods`, pytorch-grad-cam's classes), which every heatmap in cxrlab comes from —
``cxr explain``, the report's gallery and lung-attention score, ``cxr predict --explain`` and
``cxr serve --heatmaps``; and overlays.

Heatmaps are computed in fp32 on the CPU whatever the run trained in (no autocast).

Where the target layer is the backbone's output (every family's default) the engine splits the network
there: the backbone runs once per batch of images without gradients, and
pytorch-grad-cam explains the head alone on those activations, so a batch costs one backbone forward
plus the head's forward and backward. A frozen backbone's activations can be kept in cxrlab's cache
(``cache=``, keyed by the image's pixels and the backbone's weights), so explaining the same test images
again — the next run on the same data, ``cxr evaluate`` — runs no backbone at all."""

from __future__ import annotations

import copy
import difflib
import hashlib
import threading
from pathlib import Path
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
    serve several threads.

    ``cache``: a cache folder (``ImageCache.root``) for the target layer's activations, used only where the
    network is split at the backbone's output (:attr:`split`); pass it for frozen backbones, whose
    activations every run on the same pretrained weights shares. :attr:`cache_hits` counts the images whose
    activations came from it."""

    #: Images per pytorch-grad-cam call on the whole network (a target layer inside the backbone).
    CHUNK = 16
    #: Images per backbone forward (and head CAM call) where the network is split at the backbone.
    BATCH = 32

    def __init__(
        self,
        model: nn.Module,
        model_name: str,
        meta: dict[str, Any],
        method: str = DEFAULT_METHOD,
        layer: str | None = None,
        cache: str | Path | None = None,
    ):
        self.method = get_method(method)
        self.method.cam_class()  # a missing grad-cam package: one line before the model is copied
        self.net, self.layer_name, self.layer = cam_model(model, model_name, layer)
        self.model_name = model_name
        self.channels = int(meta["channels"])
        self.mean, self.std = tuple(meta["mean"]), tuple(meta["std"])
        self.size = int(meta["image_size"])
        self.multilabel = meta.get("task") == "multilabel"
        #: one logit for two classes: class 1 is +logit, class 0 is -logit
        self.sigmoid = model.head.out.out_features == 1 and not self.multilabel
        self._lock = threading.Lock()
        #: the head explained on the backbone's activations (None: the whole network per CAM call)
        self._head: nn.Module | None = None
        activations_only = self.method.gradients or not self.method.class_specific
        if _splits_at_backbone(self.net, self.layer) and activations_only:
            entry = nn.Identity()  # the target layer of the head model: its input, the backbone's output
            entry.register_forward_hook(_gradients_from_here)
            self._head, self._entry = nn.Sequential(entry, self.net.head).eval(), entry
        self.cache = Path(cache) if cache is not None and self._head is not None else None
        self.cache_hits = 0
        self._ident: str | None = None

    @property
    def split(self) -> bool:
        """True when the backbone runs without gradients and the CAM method explains the head on its output
        (target layer = the backbone's output, a gradient or activation method; not Score-/Ablation-CAM,
        which run the whole network on altered inputs)."""
        return self._head is not None

    @classmethod
    def for_run(
        cls,
        loaded: Any,
        method: str = DEFAULT_METHOD,
        layer: str | None = None,
        cache: str | Path | None = None,
    ) -> CamEngine:
        """The engine for a loaded run (:class:`cxrlab.evaluation.inference.LoadedRun`); ``cache``: as
        the constructor's."""
        return cls(loaded.model, loaded.cfg.model.name, loaded.meta, method, layer, cache)

    def tensor(self, images: np.ndarray) -> torch.Tensor:
        """The fp32 model input ``(N, C, H, W)``, normalised as in training, of uint8 images ``(N, H, W)``."""
        from cxrlab.data.prepare import to_tensor

        return to_tensor(np.asarray(images), self.channels, self.mean, self.std)

    def __call__(self, images: np.ndarray, targets: list[int]) -> np.ndarray:
        """Heatmaps ``(N, H, W)`` in [0, 1] for uint8 images ``(N, H, W)`` in the run's input geometry, each
        for its class index in ``targets``."""
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        step = self.BATCH if self.split else self.CHUNK
        out = []
        for i in range(0, len(images), step):
            part, aims = np.asarray(images[i : i + step]), list(targets[i : i + step])
            if self.split:
                out.append(self._head_maps(self.activations(part), aims, part.shape[1:]))
            else:
                out.append(self._network_maps(self.tensor(part), aims))
        return np.concatenate(out) if out else np.zeros((0, *np.shape(images)[1:]), np.float32)

    def maps(self, x: torch.Tensor, targets: list[int]) -> np.ndarray:
        """Heatmaps ``(N, H, W)`` in [0, 1] (each scaled to its own maximum by pytorch-grad-cam) for an input
        tensor ``x`` ``(N, C, H, W)``, in fp32 (no autocast)."""
        if self.split:
            return self._head_maps(self._backbone(x), targets, tuple(x.shape[2:]))
        return self._network_maps(x, targets)

    def activations(self, images: np.ndarray) -> torch.Tensor:
        """The backbone's output ``(N, C, h, w)`` (fp32, contiguous) for uint8 images ``(N, H, W)``, from the
        cache where it holds them (:attr:`cache_hits`), else one forward per :attr:`BATCH` images (written
        to the cache). Only for a :attr:`split` engine."""
        from cxrlab.data.cache import load_npy, save_npy

        images = np.asarray(images)
        if self.cache is None:
            return torch.cat([self._backbone(self.tensor(images[i : i + self.BATCH]))
                              for i in range(0, len(images), self.BATCH)])  # fmt: skip
        paths = [self._entry_path(image) for image in images]
        found: dict[int, np.ndarray] = {}
        for i, path in enumerate(paths):
            hit = load_npy(path)
            if hit is not None and hit.dtype == np.float32 and hit.ndim == 3:
                found[i] = hit
        missing = [i for i in range(len(images)) if i not in found]
        for start in range(0, len(missing), self.BATCH):
            idx = missing[start : start + self.BATCH]
            computed = self._backbone(self.tensor(images[idx])).numpy()
            for i, a in zip(idx, computed, strict=True):
                found[i] = a
                if self.cache is not None and not save_npy(paths[i], a):
                    self.cache = None  # full or read-only: compute the rest, write nothing more
        self.cache_hits += len(images) - len(missing)
        return torch.from_numpy(np.stack([found[i] for i in range(len(images))]))

    def _backbone(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's fp32 output for input ``x``, without gradients (contiguous layout: ``channels_last``
        is faster on CPUs but moves the maps by up to 1.4e-5 from pytorch-grad-cam's, docs/benchmarks.md)."""
        with torch.no_grad(), torch.autocast("cpu", enabled=False):
            out = self.net.backbone(x.float())
        return out.float().contiguous()

    def _entry_path(self, image: np.ndarray) -> Path:
        """The cache file of one image's activations: ``CACHE/cam-activations/ab/<sha1>.npy``, the key hashing
        the model, the backbone's weights, the input normalisation, torch's version and the image's pixels."""
        if self._ident is None:
            h = hashlib.sha1()
            for name, t in self.net.backbone.state_dict().items():
                h.update(name.encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
            self._ident = "|".join(
                ["cam-activations-v1", self.model_name, h.hexdigest(), str(self.channels), repr(self.mean),
                 repr(self.std), f"torch={torch.__version__}"]
            )  # fmt: skip
        key = hashlib.sha1(self._ident.encode())
        key.update(f"|{image.dtype}|{image.shape}|".encode())
        key.update(np.ascontiguousarray(image).tobytes())
        digest = key.hexdigest()
        assert self.cache is not None
        return self.cache / "cam-activations" / digest[:2] / f"{digest}.npy"

    def _head_maps(self, acts: torch.Tensor, targets: list[int], size: tuple[int, ...]) -> np.ndarray:
        """Heatmaps ``(N, *size)`` from the backbone's activations: pytorch-grad-cam on the head (its target
        layer the head's input), its ``(h, w)`` maps then resized to ``size`` and scaled to [0, 1] by
        pytorch-grad-cam's own ``scale_cam_image``, as it does for the whole network."""
        from cxrlab._optional import require

        if acts.ndim != 4:
            raise ModelError(
                f"the target layer gives no spatial heatmap (shape {tuple(acts.shape)}); "
                "choose another --layer"
            )
        scale = require("pytorch_grad_cam.utils.image", "explain", "heatmaps").scale_cam_image
        cls = self.method.cam_class()
        targets_ = [LogitTarget(int(t), self.sigmoid) for t in targets]
        assert self._head is not None
        with (
            self._lock,
            torch.autocast("cpu", enabled=False),
            cls(model=self._head, target_layers=[self._entry]) as cam,
        ):
            small = cam(input_tensor=acts, targets=targets_)
        height, width = int(size[0]), int(size[1])
        maps = scale(scale(small, (width, height)))
        return np.nan_to_num(np.maximum(maps, 0.0)).astype(np.float32)

    def _network_maps(self, x: torch.Tensor, targets: list[int]) -> np.ndarray:
        """:meth:`maps` by pytorch-grad-cam on the whole network (a target layer inside the backbone)."""
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


def _splits_at_backbone(net: nn.Module, layer: nn.Module) -> bool:
    """True for a :class:`~cxrlab.models.heads.Classifier` (whose forward is ``head(backbone(x))`` in eval
    mode) hooked at its backbone's output."""
    from cxrlab.models.heads import Classifier

    return isinstance(net, Classifier) and type(net).forward is Classifier.forward and layer is net.backbone


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
