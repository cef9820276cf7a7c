"""The fast path: compute frozen-backbone features once, cache them, train only the head.

Features are computed in inference mode with ``channels_last`` (and bf16 autocast where the
hardware has bf16), then stored in the cache as ``.npy``. With global pooling in the head the
pooled vector is stored (shape ``(N, C, 1, 1)``, so the head's pooling is the identity);
with ``flatten`` pooling or batch norm on the feature map the whole map is stored (fp16).
"""

from __future__ import annotations

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
) -> np.ndarray:
    """Backbone outputs for ``images`` (uint8 ``(N, H, W)``), read from or written to the cache."""
    mode = feature_mode(cfg)
    dtype = inference_dtype(cfg.train.precision, device)
    ident = [
        "features-v1",
        spec.name,
        str(cfg.model.pretrained),
        str(channels),
        mode,
        str(dtype),
        "" if cfg.model.pretrained else f"seed={cfg.train.seed}",
        *keys,
    ]
    path = cache.features_path(digest(ident)) if cache is not None and cache.enabled else None
    if path is not None:
        hit = load_npy(path)
        if hit is not None and len(hit) == len(images):
            return hit.astype(np.float32)
    net = prepare_for_inference(model.backbone, device)

    def run(x: torch.Tensor) -> torch.Tensor:
        fmap = net(x)
        if mode == "avg":
            return fmap.float().mean(dim=(2, 3), keepdim=True)
        if mode == "max":
            return fmap.float().amax(dim=(2, 3), keepdim=True)
        return fmap

    (feats,) = batched(
        run,
        lambda s: to_tensor(images[s], channels, spec.mean, spec.std),
        len(images),
        64,
        device,
        dtype,
        progress=label,
    )
    model.backbone.to(memory_format=torch.contiguous_format)
    if path is not None:
        save_npy(path, feats.astype(np.float16 if mode == "map" else np.float32))
    return feats.astype(np.float32)
