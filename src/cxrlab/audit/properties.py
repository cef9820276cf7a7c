"""Acquisition properties read from file headers (no pixel is decoded) and content hashes.

These are the properties a classifier can exploit without looking at the lungs: image size,
aspect ratio, file format, colour mode, bit depth and how many bytes each pixel costs on disk
(compression). When they differ by class, a model can be right for the wrong reason.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import numpy as np

from cxrlab.data.images import ImageReadError, read_info

NUMERIC = ("width", "height", "aspect_ratio", "bytes_per_pixel")
CATEGORICAL = ("format", "color_mode", "bit_depth")
PROPERTIES = ("width", "height", "aspect_ratio", "format", "color_mode", "bit_depth", "bytes_per_pixel")


def file_properties(path: str) -> dict[str, Any]:
    """The acquisition properties of one file; raises :class:`ImageReadError` when unreadable."""
    info = read_info(path)
    pixels = max(info.width * info.height, 1)
    return {
        "width": info.width,
        "height": info.height,
        "aspect_ratio": round(info.width / max(info.height, 1), 4),
        "format": info.format,
        "color_mode": info.mode,
        "bit_depth": info.bit_depth,
        "bytes_per_pixel": round(info.bytes / pixels, 5),
    }


def read_properties(paths: list[str]) -> tuple[list[dict[str, Any] | None], dict[str, str]]:
    """Properties per path (``None`` where the header is unreadable) and the reasons for failures."""
    props: list[dict[str, Any] | None] = []
    failures: dict[str, str] = {}
    for path in paths:
        try:
            props.append(file_properties(path))
        except ImageReadError as exc:
            props.append(None)
            failures[path] = str(exc)
    return props, failures


def content_hash(path: str) -> str | None:
    """SHA-256 of the file's bytes (``None`` when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None


def array_hash(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes (images that come as arrays, e.g. MedMNIST)."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def per_class_summary(
    props: list[dict[str, Any] | None], labels: np.ndarray, classes: list[str]
) -> dict[str, dict[str, Any]]:
    """Per class: numeric properties as median, 5/25/75/95th percentiles, min and max; categorical
    ones as counts."""
    out: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(classes):
        rows = [p for p, y in zip(props, labels, strict=True) if p is not None and y == c]
        entry: dict[str, Any] = {"n": len(rows)}
        for key in NUMERIC:
            values = np.array([r[key] for r in rows], dtype=np.float64)
            entry[key] = (
                {
                    "median": float(np.median(values)),
                    "p5": float(np.percentile(values, 5)),
                    "p25": float(np.percentile(values, 25)),
                    "p75": float(np.percentile(values, 75)),
                    "p95": float(np.percentile(values, 95)),
                    "min": float(values.min()),
                    "max": float(values.max()),
                }
                if len(values)
                else None
            )
        for key in CATEGORICAL:
            entry[key] = dict(Counter(str(r[key]) for r in rows).most_common())
        out[name] = entry
    return out
