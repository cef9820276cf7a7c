"""Shared plumbing of the generative pipelines: output folders, weights files, data, grids, plots."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrlab.config import DataConfig, check_range
from cxrlab.data.prepare import PreparedData, prepare_data
from cxrlab.errors import CxrError, DataError, ModelError
from cxrlab.runs import (
    LOCK,
    RunLock,
    atomic_write,
    check_out_path,
    check_replaceable,
    claim_folder,
    protect,
    read_json,
    read_weights,
)

# What each generative command writes into its folder (top-level names or glob patterns), keyed by the
# description file that marks the folder; `--overwrite` deletes these and nothing else.
FOLDER_ENTRIES: dict[str, tuple[str, ...]] = {
    "autoencoder.json": (
        "autoencoder.json",
        "autoencoder.safetensors",
        "history.csv",
        "checkpoints",
        "loss.png",
        "reconstructions.png",
    ),
    "codes.npz": ("codes.npz", "codes.json"),
    "gan.json": (
        "gan.json",
        "real.png",
        "samples",
        "generator.safetensors",
        "discriminator.safetensors",
        "checkpoints",
        "losses.csv",
        "losses.png",
        "discriminator.png",
    ),
    "quality.json": ("quality.json", "plots", "report.html"),
}


def _kind(marker: str) -> str:
    return marker.rsplit(".", 1)[0]


def _busy(out: Path) -> str:
    return f"{out} already exists and is not empty; choose another --out or add --overwrite"


def check_out(out: str | Path, marker: str, overwrite: bool, what: str) -> Path:
    """Fail early (before any decoding) when ``out`` cannot be (re)created; changes nothing.

    A non-empty folder is replaced only with ``overwrite``, and only when cxrlab wrote it as this kind
    of folder and it holds nothing else (:func:`cxrlab.runs.check_replaceable`); never the folder being
    read (:func:`cxrlab.runs.protect`), the current, home or root folder."""
    out = check_out_path(out)
    if out.exists() and any(p.name != LOCK for p in out.iterdir()):
        if not overwrite:
            raise CxrError(_busy(out))
        check_replaceable(out, _kind(marker), FOLDER_ENTRIES.get(marker, (marker,)), what)
    return out


def prepare_folder(out: str | Path, marker: str, overwrite: bool, what: str) -> Path:
    """Create ``out`` (marked as cxrlab's); a non-empty folder is replaced only as :func:`check_out` allows.

    The folder's lock is taken and kept until the process ends: a second writer stops at once."""
    out = check_out(out, marker, overwrite, what)
    key = os.path.realpath(out)
    if key in _HELD:  # written before by this process (in-process API use): ours to write again
        _HELD.pop(key).release()
    entries = FOLDER_ENTRIES.get(marker, (marker,))
    _HELD[key] = claim_folder(out, _kind(marker), entries, what, overwrite, _busy(out))
    return out


_HELD: dict[str, RunLock] = {}  # locks of the folders this process writes, released when it ends


def load_weights(path: Path, module: torch.nn.Module) -> torch.nn.Module:
    """Load safetensors weights into ``module`` (never pickle); damage is a one-line :class:`ModelError`."""
    state = read_weights(path, "did training finish? (train again or give the right folder)")
    try:
        module.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - a file that does not match its JSON description
        raise ModelError(
            f"{path} is corrupted or does not match its JSON description ({exc.__class__.__name__}); "
            "train again"
        ) from None
    return module


def read_meta(folder: str | Path, name: str, what: str, command: str) -> dict[str, Any]:
    """The JSON description of a trained autoencoder/GAN folder, with a one-line error when absent."""
    path = Path(folder) / name
    if not path.is_file():
        raise CxrError(f"{folder} is not {what} (no {name}); create one with `{command}`")
    return read_json(path)


def load_data(
    data: str | None,
    image_size: int,
    seed: int,
    classes: list[str] | None = None,
    max_per_class: int | None = None,
    cache_dir: str | None = None,
    resize: str = "squash",
    progress: bool = True,
) -> tuple[DataConfig, PreparedData]:
    """Decode a dataset like `cxr train` does (same splits for the same data and seed)."""
    if not data:
        raise DataError("no data given: pass --data FOLDER (class subfolders or train/val/test)")
    check_range("--max-per-class", max_per_class, 1, 10**9, "a number of images per class and split")
    protect(data)  # --overwrite never deletes the folder being read
    cfg = DataConfig(
        path=str(data), classes=classes, max_per_class=max_per_class, cache_dir=cache_dir, resize=resize
    )
    prepared = prepare_data(cfg, image_size, seed, progress=progress)
    if prepared.codes is not None:
        raise DataError(f"{data} holds autoencoder codes; this command needs images")
    return cfg, prepared


def now() -> str:
    """Local time for JSON records."""
    return time.strftime("%Y-%m-%d %H:%M:%S")


# --------------------------------------------------------------------------- pictures


def tile(images: np.ndarray, ncol: int = 8) -> np.ndarray:
    """uint8 ``(n, H, W)`` images tiled into one uint8 picture (2-pixel grey gaps), for PNG grids."""
    n, h, w = images.shape
    nrow = int(np.ceil(n / ncol))
    canvas = np.full((nrow * (h + 2) + 2, ncol * (w + 2) + 2), 128, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, ncol)
        canvas[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = images[k]
    return canvas


def save_png(path: Path, image: np.ndarray) -> None:
    """Write a uint8 grey image as PNG (atomically)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write(path, buf.getvalue())


def loss_plot(
    rows: list[dict[str, Any]], keys: Sequence[str], path: Path, title: str = "", ylabel: str = "loss"
):
    """Curves of ``keys`` per epoch from history rows."""
    from cxrlab.figures import plt, save_figure

    fig, ax = plt.subplots(figsize=(6, 3.6))
    epochs = [int(r["epoch"]) for r in rows]
    for key in keys:
        values = [float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows]
        ax.plot(epochs, values, "-o", ms=3, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def to_uint8(x: torch.Tensor, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Float images ``(N, 1, H, W)`` in ``[low, high]`` → uint8 ``(N, H, W)``."""
    scaled = (x.detach().float().cpu()[:, 0] - low) / (high - low) * 255.0
    return scaled.round().clamp(0, 255).to(torch.uint8).numpy()
