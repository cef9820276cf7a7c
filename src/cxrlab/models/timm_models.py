"""Any timm model as a backbone: ``model.name: timm/NAME`` (e.g. ``timm/mobilenetv1_100``).

timm is optional (``pip install 'cxrlab[timm]'``). Pretrained weights use timm's own handling
(Hugging Face hub cache, ``$HF_HOME``); when they are not cached and the hub cannot be reached,
building fails within seconds with one line instead of hanging on a download.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from cxrlab._optional import MissingDependencyError, require
from cxrlab.config import ModelConfig
from cxrlab.errors import ModelError
from cxrlab.models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, register_resolver
from cxrlab.models.split import timm_blocks
from cxrlab.models.weights import network_reachable, torch_home

HF_HOST = "huggingface.co"
_HF_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def import_timm() -> ModuleType:
    """timm, or a one-line error saying how to install it."""
    try:
        return require("timm", "timm", "a timm/… model")
    except MissingDependencyError as exc:  # a ModelError, as every other model that cannot be built
        raise ModelError(str(exc)) from None


def _arch(name: str) -> str:
    return name.split("/", 1)[1] if name.startswith("timm/") else name


def check_timm_name(arch: str) -> None:
    """Raise a one-line error for a name timm does not know, with close matches."""
    timm = import_timm()
    if timm.is_model(arch):
        return
    import difflib

    base = arch.split(".")[0]
    close = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join('timm/' + c for c in close)}?" if close else ""
    raise ModelError(f"timm has no model {arch!r}{hint} (list them with `cxr models --timm 'PATTERN*'`)")


def pretrained_cfg(arch: str):
    """timm's pretrained config for ``arch`` (with or without a ``.tag``), or None."""
    timm = import_timm()
    try:
        return timm.models.get_pretrained_cfg(arch)
    except (RuntimeError, ValueError, KeyError):
        return None


def timm_weights_cached(arch: str) -> bool:
    """True when timm can load ``arch``'s pretrained weights without a download."""
    cfg = pretrained_cfg(arch)
    if cfg is None:
        return False
    if getattr(cfg, "file", None) and Path(cfg.file).is_file():
        return True
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = hub_id.partition("@")
        for filename in _HF_FILES:
            hit = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(hit, str):
                return True
    url = getattr(cfg, "url", None)
    return bool(url) and (torch_home() / os.path.basename(url)).is_file()


def _offline() -> bool:
    flags = ("CXRLAB_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(f, "") not in ("", "0") for f in flags)


def ensure_timm_weights(arch: str) -> None:
    """Fail fast (one line) when ``arch``'s weights are neither cached nor downloadable."""
    arch = _arch(arch)
    cfg = pretrained_cfg(arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or getattr(cfg, "file", None)):
        raise ModelError(f"timm has no pretrained weights for {arch!r}; train it without --pretrained")
    if timm_weights_cached(arch):
        return
    source = cfg.hf_hub_id or cfg.url
    if _offline() or not network_reachable(HF_HOST if cfg.hf_hub_id else _host(cfg.url)):
        raise ModelError(
            f"pretrained weights of timm/{arch} ({source}) are not in timm's cache and cannot be "
            "downloaded from here; fetch them where there is a network (timm.create_model("
            f"'{arch}', pretrained=True)), copy $HF_HOME here, or train without --pretrained"
        )


def _host(url: str) -> str:
    from urllib.parse import urlparse

    return urlparse(url).hostname or HF_HOST


class TimmBackbone(nn.Module):
    """A timm model's ``forward_features`` (NCHW map); token models give their pooled pre-logits."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.net.forward_features(x)
        if f.dim() == 4:
            c = getattr(self.net, "num_features", f.shape[1])
            if f.shape[1] != c and f.shape[-1] == c:  # NHWC (e.g. Swin)
                f = f.permute(0, 3, 1, 2)
            return f
        return self.net.forward_head(f, pre_logits=True)


def _builder(arch: str):
    def build(pretrained: bool, cfg: ModelConfig) -> nn.Module:
        timm = import_timm()
        if pretrained:
            ensure_timm_weights(arch)
        try:
            net = timm.create_model(arch, pretrained=pretrained, num_classes=0)
        except Exception as exc:  # noqa: BLE001 - timm/hub errors become one line
            first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            raise ModelError(f"timm could not build {arch!r}: {first}") from None
        return TimmBackbone(net)

    return build


@functools.cache
def timm_spec(name: str) -> ModelSpec:
    """The registry entry of ``timm/NAME`` (input size and normalisation from timm's config)."""
    arch = _arch(name)
    check_timm_name(arch)
    cfg = pretrained_cfg(arch)
    size = int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224
    mean = tuple(cfg.mean) if cfg is not None and cfg.mean else IMAGENET_MEAN
    std = tuple(cfg.std) if cfg is not None and cfg.std else IMAGENET_STD
    return ModelSpec(
        f"timm/{arch}",
        _builder(arch),
        size,
        mean=mean,
        std=std,
        family="timm",
        blocks=timm_blocks,
        description=f"timm {arch}" + (f" (weights {cfg.hf_hub_id or cfg.url})" if cfg is not None else ""),
    )


def list_timm(pattern: str = "*") -> list[str]:
    """timm model names matching a glob pattern, as ``timm/NAME``."""
    return ["timm/" + n for n in import_timm().list_models(pattern)]


def timm_table(pattern: str) -> list[dict[str, object]]:
    """timm models matching ``pattern`` with their input size and whether weights are cached."""
    rows: list[dict[str, object]] = []
    for name in list_timm(pattern):
        arch = _arch(name)
        cfg = pretrained_cfg(arch)
        size = int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else None
        rows.append(
            {
                "model": name,
                "input": f"3×{size}×{size}" if size else None,
                "pretrained": cfg is not None and bool(cfg.hf_hub_id or cfg.url),
                "weights offline": timm_weights_cached(arch),
                "weights": (cfg.hf_hub_id or cfg.url) if cfg is not None else None,
            }
        )
    return rows


register_resolver("timm/", timm_spec)
