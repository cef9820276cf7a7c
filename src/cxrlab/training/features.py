"""The fast path: compute frozen-backbone features once, cache them, train only the head.

Features are computed in inference mode with ``channels_last`` at the *training* precision (bf16
autocast where ``train.precision: auto`` finds bf16 hardware: they are the head's training inputs), then
stored in the cache as ``.npy`` (the dtype is part of the key). Where ``eval.precision`` resolves to
another dtype, :func:`cxrlab.training.train.fit` computes the validation and test features again at that
precision, so the scores in metrics.json are those of ``cxr predict`` on every CPU. With global pooling
in the head the pooled vector is stored (shape ``(N, C, 1, 1)``, so the head's pooling is the identity);
with ``flatten`` pooling or batch norm on the feature map the whole map is stored (fp16).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from cxrlab.config import RunConfig
from cxrlab.data.cache import ImageCache, digest, load_npy, save_npy
from cxrlab.data.prepare import to_tensor
from cxrlab.models import ModelSpec
from cxrlab.models.heads import Classifier
from cxrlab.runtime import batched, inference_dtype, prepare_for_inference


def fast_path_applies(cfg: RunConfig) -> bool:
    """Frozen backbone and no augmentation: features never change, so compute them once."""
    return cfg.train.fast_path and cfg.model.freeze == "backbone" and not cfg.data.augment


def feature_mode(cfg: RunConfig) -> str:
    """``avg``/``max`` (pooled vectors) or ``map`` (whole feature map)."""
    head = cfg.model.head
    return "map" if head.pooling == "flatten" or head.batch_norm else head.pooling


def backbone_features(
    model: Classifier,
    images: np.ndarray,
    keys: list[str],
    cfg: RunConfig,
    spec: ModelSpec,
    channels: int,
    device: str,
    cache: ImageCache | None = None,
    label: str | None = "features",
    precision: str | None = None,
) -> np.ndarray:
    """Backbone outputs for ``images`` (uint8 ``(N, H, W)``), read from or written to the cache;
    ``precision``: as ``train.precision`` (None: the config's ``train.precision``)."""
    mode = feature_mode(cfg)

    def pool(fmap: torch.Tensor) -> torch.Tensor:
        if mode == "avg":
            return fmap.float().mean(dim=(2, 3), keepdim=True)
        if mode == "max":
            return fmap.float().amax(dim=(2, 3), keepdim=True)
        return fmap

    store = np.float16 if mode == "map" else np.float32
    feats = _cached_outputs(model.backbone, pool, ["features-v2", mode], images, keys, cfg, spec, channels,
                            device, cache, label, store, precision)  # fmt: skip
    return feats.astype(np.float32)


def _cached_outputs(
    module: torch.nn.Module,
    transform: Callable[[torch.Tensor], torch.Tensor],
    what: list[str],
    images: np.ndarray,
    keys: list[str],
    cfg: RunConfig,
    spec: ModelSpec,
    channels: int,
    device: str,
    cache: ImageCache | None,
    label: str | None,
    store_dtype: type,
    precision: str | None = None,
) -> np.ndarray:
    """``transform(module(x))`` over ``images`` in inference batches, or its earlier result from the cache,
    keyed by ``what`` (a kind, then its settings), the model, weights, channels, dtype and image keys."""
    dtype = inference_dtype(precision or cfg.train.precision, device)
    ident = [
        what[0],
        spec.name,
        str(cfg.model.pretrained),
        str(channels),
        *what[1:],
        str(dtype),
        "" if cfg.model.pretrained else f"seed={cfg.train.seed}",
        *keys,
    ]
    path = cache.features_path(digest(ident)) if cache is not None and cache.enabled else None
    if path is not None:
        hit = load_npy(path)
        if hit is not None and len(hit) == len(images):
            return hit
    net = prepare_for_inference(module, device)
    (out,) = batched(
        lambda x: transform(net(x)),
        lambda s: to_tensor(images[s], channels, spec.mean, spec.std),
        len(images),
        64,
        device,
        dtype,
        progress=label,
    )
    module.to(memory_format=torch.contiguous_format)
    out = np.ascontiguousarray(out.astype(storage_dtype(out, store_dtype)))
    if path is not None:
        save_npy(path, out)
    return out


def storage_dtype(values: np.ndarray, preferred: type) -> type:
    """``preferred``, unless it is fp16 and a value lies beyond fp16's range (e.g. the activations of a
    randomly initialised network): then float32, so the cache never turns a number into inf. (The cache
    keys' ``-v2`` retires entries written before this check, which could hold inf.)"""
    if preferred is not np.float16 or not values.size:
        return preferred
    largest = max(float(values.max()), -float(values.min()))
    return np.float32 if largest > np.finfo(np.float16).max else preferred


# --- partial fine-tuning: the frozen prefix runs once, its activations are cached (fp16) ------------------


def partial_freeze(cfg: RunConfig) -> bool:
    """``model.freeze`` is N (layers) or ``blocks:K``: part of the backbone trains."""
    return cfg.model.freeze not in ("none", "0", "backbone")


def activation_path_note(cfg: RunConfig, k: int) -> str | None:
    """Why a partial freeze does not use cached activations (None when it does, or does not apply)."""
    if not partial_freeze(cfg):
        return None
    if k == 0:
        return (
            f"freeze {cfg.model.freeze}: no whole backbone block is frozen (or {cfg.model.name} has no block "
            "split), so every epoch runs the full network"
        )
    if cfg.data.augment:
        return (
            f"freeze {cfg.model.freeze} with augmentation: the frozen prefix ({k} blocks) runs every epoch "
            "on the augmented images (full path); cached activations need fixed inputs — turn augmentation "
            "off to train the suffix on cached activations"
        )
    if not cfg.train.fast_path:
        return f"freeze {cfg.model.freeze} with train.fast_path off: every epoch runs the full network"
    return None


def prefix_activations(
    prefix: torch.nn.Module,
    k: int,
    images: np.ndarray,
    keys: list[str],
    cfg: RunConfig,
    spec: ModelSpec,
    channels: int,
    device: str,
    cache: ImageCache | None = None,
    label: str | None = "activations",
    precision: str | None = None,
) -> np.ndarray:
    """Output of the frozen prefix (backbone blocks ``1…k``, eval mode) for ``images`` (uint8 ``(N, H, W)``),
    as fp16 ``(N, C, h, w)`` (float32 when a value exceeds fp16), read from or written to the cache."""
    what = ["activations-v2", f"blocks={k}", f"size={cfg.data.image_size}"]
    return _cached_outputs(prefix, lambda x: x, what, images, keys, cfg, spec, channels,
                           device, cache, label, np.float16, precision)  # fmt: skip
