"""Decode any PIL-readable or DICOM radiograph into a fixed-size 8-bit grayscale array.

Every image, whatever its format (JPEG/PNG/TIFF/BMP…), bit depth (1, 8, 16, 32-bit, float),
mode (L, RGB, RGBA, P with transparency, CMYK, LA) or EXIF orientation, becomes an
``(size, size)`` ``uint8`` array. Radiographs are grayscale: colour inputs (figure crops,
screenshots) are converted with ITU-R 601 luma, so colour cannot become a shortcut.
DICOM files (``.dcm``/``.dicom``, or no ending and the ``DICM`` marker) go through
:mod:`cxrlab.data.dicom` (Modality LUT, VOI LUT/window or percentile window → 8 bits, MONOCHROME1 inverted).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from cxrlab.data.dicom import DICOM_SUFFIXES, DicomError, is_dicom, read_dicom, read_header

#: Largest image accepted, in pixels (width × height). Bigger files are refused as likely
#: decompression bombs. 100 MP is ~25× a large digital radiograph (~4k × 4k). Override with
#: the ``CXRLAB_MAX_PIXELS`` environment variable.
MAX_PIXELS = int(os.environ.get("CXRLAB_MAX_PIXELS", 100_000_000))

#: File endings considered images; everything else in a class folder is ignored.
IMAGE_SUFFIXES = (
    frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm", ".jfif"})
    | DICOM_SUFFIXES
)

ImageFile.LOAD_TRUNCATED_IMAGES = False
# We enforce our own limit (below) before decoding; PIL's own check would only warn.
Image.MAX_IMAGE_PIXELS = None


class ImageReadError(Exception):
    """The file is not a usable image; ``str(exc)`` says why in a few words."""


@dataclass(frozen=True)
class ImageInfo:
    """Acquisition properties read from the header (no pixel decoding)."""

    width: int
    height: int
    format: str
    mode: str
    bit_depth: int
    bytes: int


_BITS = {
    "1": 1,
    "L": 8,
    "P": 8,
    "RGB": 8,
    "RGBA": 8,
    "CMYK": 8,
    "LA": 8,
    "YCbCr": 8,
    "I;16": 16,
    "I;16B": 16,
    "I;16L": 16,
    "I": 32,
    "F": 32,
}


def is_image_file(path: str | Path) -> bool:
    """True when the file name ends like an image, or it is a DICOM file without a known ending
    (no ending, or an all-digit one as in UID-named exports, and the ``DICM`` marker)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES or is_dicom(path)


def read_info(path: str | Path) -> ImageInfo:
    """Read width, height, format, mode and bit depth from the header only (DICOM: format ``DICOM``,
    mode = Photometric Interpretation, bit depth = Bits Stored)."""
    if is_dicom(path):
        try:
            head = read_header(path)
        except DicomError as exc:
            raise ImageReadError(exc.reason) from None
        return ImageInfo(
            head.columns, head.rows, "DICOM", head.photometric or "?", head.bits_stored, os.path.getsize(path)
        )
    try:
        with Image.open(path) as img:
            return ImageInfo(
                img.width,
                img.height,
                img.format or "?",
                img.mode,
                _BITS.get(img.mode, 8),
                os.path.getsize(path),
            )
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(_reason(exc)) from None


def load_gray(path: str | Path, size: int, resize: str = "squash") -> np.ndarray:
    """Decode ``path`` into a ``(size, size)`` uint8 grayscale array.

    Raises :class:`ImageReadError` for empty, truncated, non-image and oversized files, and for DICOM
    files :mod:`cxrlab.data.dicom` refuses (multi-frame, no pixel data, no decoder, damaged).
    """
    if is_dicom(path):
        try:
            gray = Image.fromarray(read_dicom(path, MAX_PIXELS))
        except DicomError as exc:
            raise ImageReadError(exc.reason) from None
        return resize_square(gray, size, resize)
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageReadError(
                    f"{img.width}x{img.height} exceeds the {MAX_PIXELS:,}-pixel limit "
                    "(set CXRLAB_MAX_PIXELS to allow larger images)"
                )
            if img.format == "JPEG" and img.mode in ("L", "RGB", "YCbCr"):
                # Let libjpeg decode at a reduced scale (DCT scaling): much faster for big files.
                img.draft("L", (size * 2, size * 2))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img.load()
            gray = to_gray(ImageOps.exif_transpose(img))
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageReadError(_reason(exc)) from None
    return resize_square(gray, size, resize)


def to_gray(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit ``L``, stretching high-bit-depth data to 0–255."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = np.percentile(arr, [0.0, 100.0]) if arr.size else (0.0, 1.0)
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    if img.mode == "CMYK":
        img = img.convert("RGB")
    return img.convert("L") if img.mode != "L" else img


def resize_square(img: Image.Image, size: int, mode: str = "squash") -> np.ndarray:
    """Resize to ``size × size``: squash (aspect not kept), pad (letterbox) or centre crop."""
    if mode == "pad":
        img = ImageOps.pad(img, (size, size), method=Image.Resampling.BILINEAR, color=0)
    elif mode == "crop":
        img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR)
    else:
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8).copy()


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, UnidentifiedImageError) or "cannot identify image file" in text:
        return "not a readable image (empty, corrupt or not an image format)"
    if "truncated" in text.lower():
        return "truncated image file (incomplete download or copy?)"
    if isinstance(exc, Image.DecompressionBombError):
        return "image too large (decompression-bomb guard)"
    return text.splitlines()[0] if text else exc.__class__.__name__
