"""Acquisition properties read from file headers (no pixel is decoded) and content hashes.

These are the properties a classifier can exploit without looking at the lungs: image size,
aspect ratio, file format, colour mode, bit depth and how many bytes each pixel costs on disk
(compression). When they differ by class, a model can be right for the wrong reason.

DICOM files add their acquisition attributes (:data:`DICOM_CATEGORICAL`: view position, modality,
manufacturer, body part, pixel spacing, transfer syntax; photometric interpretation is their colour mode,
Bits Stored their bit depth): a manufacturer or view that predicts the label is a shortcut like any other.
Images that are not DICOM get ``not DICOM`` there, attributes a file leaves empty ``unknown``.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np

from cxrlab.data.dicom import DicomError, is_dicom, read_header
from cxrlab.data.images import ImageReadError, read_info

NUMERIC = ("width", "height", "aspect_ratio", "bytes_per_pixel")
CATEGORICAL = ("format", "color_mode", "bit_depth")
PROPERTIES = ("width", "height", "aspect_ratio", "format", "color_mode", "bit_depth", "bytes_per_pixel")
#: DICOM header attributes used as categorical properties when the data holds DICOM files.
DICOM_CATEGORICAL = (
    "view_position",
    "modality",
    "manufacturer",
    "body_part",
    "pixel_spacing",
    "transfer_syntax",
)
NOT_DICOM = "not DICOM"


def file_properties(path: str) -> dict[str, Any]:
    """The acquisition properties of one file; raises :class:`ImageReadError` when unreadable."""
    if is_dicom(path):
        return _dicom_properties(path)
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


def _dicom_properties(path: str) -> dict[str, Any]:
    """:func:`file_properties` of a DICOM file, from one header read (never PatientName or other
    identifying attributes: :func:`cxrlab.data.dicom.read_header` does not return them)."""
    try:
        head = read_header(path)
    except DicomError as exc:
        raise ImageReadError(exc.reason) from None
    pixels = max(head.columns * head.rows, 1)
    props: dict[str, Any] = {
        "width": head.columns,
        "height": head.rows,
        "aspect_ratio": round(head.columns / max(head.rows, 1), 4),
        "format": "DICOM",
        "color_mode": head.photometric or "unknown",
        "bit_depth": head.bits_stored,
        "bytes_per_pixel": round(os.path.getsize(path) / pixels, 5),
    }
    for key in DICOM_CATEGORICAL:
        value = head.attributes.get(key)
        props[key] = "unknown" if value is None else str(value)
    return props


def read_properties(paths: list[str]) -> tuple[list[dict[str, Any] | None], dict[str, str]]:
    """Properties per path (``None`` where the header is unreadable) and the reasons for failures.
    When some files are DICOM, every row gets :data:`DICOM_CATEGORICAL` (``not DICOM`` for the others)."""
    props: list[dict[str, Any] | None] = []
    failures: dict[str, str] = {}
    for path in paths:
        try:
            props.append(file_properties(path))
        except ImageReadError as exc:
            props.append(None)
            failures[path] = str(exc)
    if any(p is not None and DICOM_CATEGORICAL[0] in p for p in props):
        for p in props:
            if p is not None:
                for key in DICOM_CATEGORICAL:
                    p.setdefault(key, NOT_DICOM)
    return props, failures


def property_keys(props: list[dict[str, Any] | None]) -> tuple[str, ...]:
    """The properties these rows carry: :data:`PROPERTIES`, plus :data:`DICOM_CATEGORICAL` for DICOM data."""
    dicom = any(p is not None and DICOM_CATEGORICAL[0] in p for p in props)
    return PROPERTIES + DICOM_CATEGORICAL if dicom else PROPERTIES


def categorical_keys(props: list[dict[str, Any] | None]) -> tuple[str, ...]:
    """The categorical properties these rows carry (:data:`CATEGORICAL`, plus the DICOM ones)."""
    return tuple(k for k in property_keys(props) if k in CATEGORICAL or k in DICOM_CATEGORICAL)


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
        for key in categorical_keys(props):
            entry[key] = dict(Counter(str(r[key]) for r in rows).most_common())
        out[name] = entry
    return out
