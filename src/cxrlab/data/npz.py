"""Check and normalise the arrays of a MedMNIST-style ``.npz`` file before anything is trained on them.

Images (``{split}_images``) become ``(N, H, W)`` ``uint8``; the rule, per dtype:

* ``uint8``: used as it is; ``bool``: False → 0, True → 255;
* other integer types (``int8``, ``uint16``, ``int16``, ``int32``…): used as they are when every value
  lies in 0..255, otherwise each image is min–max stretched to 0..255 (as 16-bit PNGs are in
  :func:`cxrlab.data.images.to_gray`);
* floats: values in [0, 1] are scaled by 255; values in [0, 255] are rounded; any other range is
  min–max stretched per image. NaN or infinite pixels are refused.

Accepted shapes: ``(N, H, W)``, ``(N, H, W, 1)`` (squeezed) and ``(N, H, W, 3)`` (RGB, converted to
grey with ITU-R 601 luma, as image files are). Labels (``{split}_labels``, ``(N,)`` or ``(N, 1)``)
must be whole numbers 0..K-1 with K at most :data:`MAX_CLASSES` and at most the number of images.
Every problem is one :class:`DataError` line naming the file, the key and the offending value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrlab.data.images import MAX_PIXELS
from cxrlab.errors import DataError

#: Largest number of classes accepted from integer labels (a guard against a stray huge label
#: making a list of a billion class names).
MAX_CLASSES = 1000

_SHAPES = "(N, H, W), (N, H, W, 1) or (N, H, W, 3)"
_CHUNK = 512  # images converted at a time (bounds the float copy of a large array)


def read_arrays(root: Path) -> dict[str, np.ndarray]:
    """Every array of the file; pickled object arrays are refused (loading them could run code)."""
    try:
        npz = np.load(root, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable archive is the user's file problem
        raise DataError(f"cannot read {root} as a .npz file: {exc}") from None
    arrays: dict[str, np.ndarray] = {}
    with npz:
        for key in npz.files:
            try:
                arrays[key] = npz[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc):
                    raise DataError(
                        f"{root}: key {key!r} is a pickled object array, which cxrlab never loads (it could "
                        "run code); save it as a numeric array (labels as integers 0..K-1)"
                    ) from None
                raise DataError(f"cannot read key {key!r} of {root}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - truncated or corrupt member
                raise DataError(f"cannot read key {key!r} of {root}: {exc}") from None
    return arrays


def check_labels(root: Path, key: str, labels: np.ndarray, n_images: int) -> np.ndarray:
    """``labels`` as ``(N,)`` int64 class indices, or a :class:`DataError` naming the bad value."""
    where = f"{root}: {key}"
    if labels.dtype.kind in "USO":
        raise DataError(
            f"{where} holds text labels (dtype {labels.dtype}); give integer class indices 0..K-1 "
            "(class names come from the file name, e.g. pneumoniamnist.npz)"
        )
    if labels.dtype.kind not in "biuf":
        raise DataError(f"{where} has dtype {labels.dtype}; labels must be integer class indices 0..K-1")
    if labels.ndim == 2 and labels.shape[1] > 1:
        raise DataError(f"{root} is multi-label ({labels.shape[1]} labels per image); not supported")
    if labels.ndim not in (1, 2):
        raise DataError(f"{where} has shape {labels.shape}; expected (N,) or (N, 1)")
    flat = labels.reshape(-1)
    if flat.dtype.kind == "f":
        bad = ~np.isfinite(flat) | (flat != np.round(flat))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{where} has {int(bad.sum())} non-integer label(s) (e.g. {float(flat[i]):g} at index {i}); "
                "labels must be whole class indices 0..K-1"
            )
    if flat.size and flat.min() < 0:
        i = int(np.argmin(flat))
        raise DataError(f"{where} has a negative label ({flat[i]:g} at index {i}); labels must be 0..K-1")
    top = int(flat.max()) if flat.size else -1
    if top >= MAX_CLASSES or top >= max(n_images, 1):
        raise DataError(
            f"{where} has label {top}; expected class indices 0..K-1 with K at most {MAX_CLASSES} and at "
            f"most the number of images ({n_images})"
        )
    return flat.astype(np.int64)


def check_names(root: Path, names: list[str] | None, labels: dict[str, np.ndarray]) -> list[str]:
    """Class names: the known ones for this file (all labels must fit them), else ``class_0``…; every
    class index must be used somewhere."""
    used = sorted({int(v) for y in labels.values() for v in np.unique(y)})
    top = used[-1] if used else -1
    if names is not None:
        if top >= len(names):
            key = next(k for k, y in labels.items() if y.size and y.max() == top)
            raise DataError(
                f"{root}: {key}_labels has label {top}, but {root.name} has {len(names)} classes "
                f"({', '.join(f'{i}={n}' for i, n in enumerate(names))})"
            )
        return list(names)
    missing = sorted(set(range(top + 1)) - set(used))
    if missing:
        raise DataError(
            f"{root}: no image in {', '.join(f'{k}_labels' for k in labels)} has label "
            f"{', '.join(map(str, missing[:5]))} (labels used: "
            f"{', '.join(map(str, used[:10]))}); labels must be consecutive class indices 0..K-1"
        )
    return [f"class_{i}" for i in range(top + 1)]


def check_images(root: Path, key: str, images: np.ndarray) -> np.ndarray:
    """``images`` as ``(N, H, W)`` uint8 following the module's rule, or a :class:`DataError`."""
    where = f"{root}: {key}"
    if images.dtype.kind not in "biuf":
        raise DataError(f"{where} has dtype {images.dtype}; images must be numeric arrays of shape {_SHAPES}")
    images = _gray_shape(where, images)
    if images.shape[1] * images.shape[2] > MAX_PIXELS:
        raise DataError(
            f"{where}: {images.shape[2]}x{images.shape[1]} images exceed the {MAX_PIXELS:,}-pixel limit "
            "(set CXRLAB_MAX_PIXELS to allow larger images)"
        )
    if images.dtype.kind == "f":
        bad = int((~np.isfinite(images)).sum())
        if bad:
            n_img = int((~np.isfinite(images)).reshape(len(images), -1).any(axis=1).sum())
            raise DataError(
                f"{where} has {bad} NaN or infinite pixel(s) in {n_img} image(s); fix or drop those images"
            )
    rgb = images.ndim == 4
    out = to_uint8(images)
    return luma(out) if rgb else out


def _gray_shape(where: str, images: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` or ``(N, H, W, 3)``; a trailing channel of 1 is squeezed; anything else refused."""
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    ok = (images.ndim == 3 or images.ndim == 4 and images.shape[-1] == 3) and min(images.shape[1:3]) > 0
    if not ok:
        raise DataError(f"{where} has shape {images.shape}; expected {_SHAPES}")
    return images


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Pixels as uint8 by the dtype rule of this module (per image when stretched)."""
    if images.dtype == np.uint8:
        return images
    if images.dtype == np.bool_:
        return images.astype(np.uint8) * 255
    lo, hi = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
    if images.dtype.kind == "f" and lo >= 0 and hi <= 1:
        return np.round(images.astype(np.float64) * 255).astype(np.uint8)
    if lo >= 0 and hi <= 255:
        return np.round(images).astype(np.uint8)
    out = np.empty(images.shape, dtype=np.uint8)
    for start in range(0, len(images), _CHUNK):
        out[start : start + _CHUNK] = _stretch(images[start : start + _CHUNK])
    return out


def _stretch(images: np.ndarray) -> np.ndarray:
    """Min–max stretch of each image to 0..255 (a constant image becomes 0)."""
    x = images.astype(np.float64)
    axes = tuple(range(1, x.ndim))
    lo = x.min(axis=axes, keepdims=True)
    span = x.max(axis=axes, keepdims=True) - lo
    scaled = np.divide(x - lo, span, out=np.zeros_like(x), where=span > 0) * 255.0
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def luma(rgb: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 → ``(N, H, W)`` uint8 grey with ITU-R 601 luma (PIL's ``convert("L")``)."""
    r, g, b = (rgb[..., c].astype(np.uint32) for c in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)
