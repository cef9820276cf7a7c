"""torchvision checkpoints: where they live and how to get them without hanging offline."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

from cxrlab.errors import ModelError


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


def network_reachable(host: str, timeout: float = 3.0) -> bool:
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
    if os.environ.get("CXRLAB_OFFLINE") or not network_reachable(host):
        raise ModelError(
            f"pretrained weights {filename} are not in {torch_home()} and {host} cannot be reached; "
            f"download {entry.url} into that folder (or set TORCH_HOME), or train without --pretrained"
        )
    return entry
