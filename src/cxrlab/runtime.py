"""Device and precision choices, fast batched inference, a quiet Lightning, the machine's description.

Measured on a development CPU (2 cores, AVX-512 without native bf16; docs/benchmarks.md):
``channels_last`` alone nearly doubles MobileNetV2 inference, while bf16 autocast *without*
hardware bf16 slows ResNet-18 down 2–3×. So training's ``auto`` uses bf16 only where the CPU has
native bf16 (``avx512_bf16`` / ``amx_bf16``) or on CUDA, and channels_last always for convolutions.
Inference (``eval.precision``) is fp32 unless a run asks otherwise, so one run folder gives the same
probabilities on every machine. ``CXRLAB_CPU_BF16=1`` / ``0`` overrides the CPU's bf16 detection
(to test or reproduce the other machine's code path).
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrlab.errors import CxrError

#: Environment variable that overrides the CPU's bf16 detection: 1 (has native bf16) or 0 (has not).
CPU_BF16_ENV = "CXRLAB_CPU_BF16"


def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises hardware bf16 (AVX512_BF16 or AMX), or as ``CXRLAB_CPU_BF16`` says."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise CxrError(f"{CPU_BF16_ENV}={forced!r}: set it to 1 (native bf16) or 0 (none), or unset it")
    return _cpuinfo_bf16()


@functools.cache
def _cpuinfo_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is a one-line error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise CxrError(f"--device {device!r}: choose auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise CxrError("--device cuda but no CUDA GPU is visible; use --device cpu or auto")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """Lightning precision string for training."""
    if precision != "auto":
        return precision
    if device == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32"


def inference_dtype(precision: str, device: str) -> torch.dtype | None:
    """Autocast dtype for inference, or ``None`` for plain fp32."""
    chosen = resolve_precision(precision, device)
    if chosen.startswith("bf16"):
        return torch.bfloat16
    if chosen.startswith("16"):
        return torch.float16
    return None


def show_progress(quiet: bool = False) -> bool:
    """Progress bars are for a person at a terminal: shown unless ``quiet`` (``-q``) or stderr is not a
    TTY (a pipe, a file, a CI log, a batch job). Every bar cxrlab draws goes through this decision."""
    if quiet:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def progress(
    iterable: Iterable[Any] | None = None,
    desc: str = "",
    total: int | None = None,
    quiet: bool = False,
    unit: str = "img",
    leave: bool = False,
    **kwargs: Any,
) -> Any:
    """cxrlab's one progress bar: tqdm on stderr, disabled by :func:`show_progress` (``quiet`` or no TTY).

    Wraps ``iterable`` like ``tqdm(iterable)``, or (without one) counts ``update(n)`` calls up to ``total``.
    A disabled bar still takes every call (``update``, ``set_postfix`` and ``close`` then draw nothing), so
    callers need not ask :func:`show_progress` themselves."""
    from tqdm.auto import tqdm

    return tqdm(
        iterable, desc=desc, total=total, unit=unit, leave=leave, dynamic_ncols=True, file=sys.stderr,
        disable=not show_progress(quiet), **kwargs,
    )  # fmt: skip


_bar = progress  # for the functions below whose parameter is named ``progress``


@torch.inference_mode()
def batched(
    fn: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]],
    make_batch: Callable[[slice], torch.Tensor],
    n: int,
    batch_size: int = 64,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    channels_last: bool = True,
    progress: str | None = None,
) -> list[np.ndarray]:
    """Run ``fn`` over ``n`` inputs in batches; returns each output concatenated as float32 numpy.
    ``progress``: the label of a progress bar (:func:`progress`), or None for none."""
    bar = _bar(desc=progress, total=n) if progress else None
    chunks: list[list[np.ndarray]] = []
    for start in range(0, n, batch_size):
        x = make_batch(slice(start, min(n, start + batch_size))).to(device)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = fn(x)
        outs = out if isinstance(out, tuple) else (out,)
        chunks.append([o.float().cpu().numpy() for o in outs])
        if bar is not None:
            bar.update(x.shape[0])
    if bar is not None:
        bar.close()
    if not chunks:
        return []
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]


def prepare_for_inference(model: nn.Module, device: str, channels_last: bool = True) -> nn.Module:
    """Eval mode, on device, channels_last memory format for convolutions."""
    model = model.eval().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def quiet_lightning() -> None:
    """Keep Lightning's banner lines (GPU available…, tips) out of the user's terminal."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*litlogger.*")
    warnings.filterwarnings("ignore", message=".*The number of training batches.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    # frozen layers are put in eval mode on purpose: their batch-norm statistics must not drift
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
    # --resume continues in a run folder whose checkpoints/ and logs/ exist by design
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")


def environment() -> dict[str, Any]:
    """Versions and machine, for reproducibility."""
    import lightning
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "cpu": platform.processor() or platform.machine(),
        "native_bf16": cpu_has_native_bf16(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
