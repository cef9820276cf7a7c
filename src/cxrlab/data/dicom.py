"""Read DICOM images into 8-bit grayscale arrays, and their non-identifying header attributes.

Pixels, in this order (DICOM PS3.4 N.2, the grayscale pipeline):

1. **decode** the first frame with pydicom's decoder for the transfer syntax (``get_decoder(uid).as_array``;
   which plugins and packages per syntax: :func:`decoder_plugins`, docs/datasets.md). pydicom checks the
   Pixel Data length itself (YBR_FULL_422 native data is 2/3 of RGB) and returns YBR_FULL / YBR_FULL_422
   as RGB; JPEG 2000 decoders invert YBR_ICT / YBR_RCT;
2. **Modality LUT**: the Modality LUT Sequence, else Rescale Slope / Intercept (``apply_modality_lut``);
3. **VOI LUT**: the first VOI LUT Sequence item, else the first Window Center / Width
   (``apply_voi_lut``, ``prefer_lut=True``);
4. **to 8 bits**, linearly onto 0–255 (rounded half up, clipped): a VOI LUT's output range (its entry
   bits); a window's output range (the Modality-LUT range of the stored bits, as pydicom windows); with no
   VOI, for Bits Stored ≤ 8, the Modality-LUT range of the stored bits (8-bit files keep their values); for
   Bits Stored > 8 the 0.5th–99.5th percentiles of the image's own Modality-LUT output
   (:data:`PERCENTILES`, :func:`stored_window`), so a CT or a 12-bit value in 16 bits keeps its contrast;
5. **MONOCHROME1** (white = low values) is inverted, so bone is bright in every image.

Colour: RGB (and YBR, decoded to RGB) becomes ITU-R BT.601 luma (:data:`LUMA`) over ``2**BitsStored - 1``;
PALETTE COLOR goes through ``apply_color_lut`` first, then luma over the LUT's ``2**bits - 1``.

Refused, as :class:`DicomError` (one line naming the file and the reason): objects without Pixel Data
(structured reports, presentation states…), multi-frame images (the first frame is never taken silently),
float pixel data, photometric interpretations other than grayscale/RGB/YBR/palette, transfer syntaxes with
no (installed) decoder — naming the syntax and the packages to install — pixel data every installed decoder
fails on (each decoder's reason, in one line), truncated or damaged files.

Privacy: :func:`read_header` returns only acquisition attributes (:data:`ATTRIBUTES`) and the Patient ID;
the Patient ID leaves this module only through :func:`patient_group`, as a salted hash unless the user
asks for raw ids (``data.dicom_patient_ids: raw``). Patient name, birth date, accession number,
institution… are never read into anything cxrlab keeps, and messages never quote header values. Sex and
age are read by :func:`subgroup_header` for subgroup metrics only and kept as counts per group and age band.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
import secrets
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab._optional import require
from cxrlab.errors import DataError

#: File endings read as DICOM; files with no ending (or an all-digit one, as in UID-named PACS exports)
#: are DICOM when they carry the ``DICM`` marker after the 128-byte preamble.
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})

#: Header attributes kept in the index and used by the audit: keyword → property name.
ATTRIBUTES = {
    "ViewPosition": "view_position",
    "Modality": "modality",
    "Manufacturer": "manufacturer",
    "BodyPartExamined": "body_part",
    "PhotometricInterpretation": "photometric",
    "BitsStored": "bits_stored",
    "PixelSpacing": "pixel_spacing",
}

#: Version of the pixel pipeline below: part of the cache key of every DICOM file (cxrlab.data.cache), so
#: a change of how DICOMs decode never serves images decoded the old way. 2: issue 28 (colour, palette,
#: percentile window for > 8-bit data without VOI).
DECODE_VERSION = "2"

#: ``data.dicom_patient_ids`` choices.
PATIENT_ID_MODES = ("hashed", "raw")

#: Group names of hashed patient ids start with this (16 hex digits of an HMAC-SHA256 follow).
HASH_PREFIX = "pid-"

_SALT_FILE = "dicom-salt"
_MARKER_OFFSET = 128


class DicomError(DataError):
    """A DICOM file that cannot be used as an image; ``reason`` is the why without the file name."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class DicomHeader:
    """What the header says, without decoding a pixel. ``patient_id`` stays in memory only."""

    rows: int
    columns: int
    bits_stored: int
    photometric: str
    transfer_syntax: str
    frames: int
    has_pixels: bool
    patient_id: str | None = field(default=None, repr=False)
    attributes: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- detection


def is_dicom(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom`` file name, or a regular file with no (or an all-digit) ending that
    starts with the DICOM preamble and ``DICM`` marker."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix and not suffix[1:].isdigit():
        return False
    return has_dicom_marker(p)


def has_dicom_marker(path: str | Path) -> bool:
    """True when a regular file holds ``DICM`` at byte 128 (never opens FIFOs or devices)."""
    try:
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as fh:
            fh.seek(_MARKER_OFFSET)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


# --------------------------------------------------------------------------- header


def _dcmread(path: str | Path, header_only: bool) -> Any:
    """pydicom's reader with its warnings silenced (they may quote header values) and its errors turned
    into one-line :class:`DicomError` reasons that never quote header values."""
    import logging

    pydicom = require("pydicom", "dicom", "DICOM input")
    from pydicom.errors import InvalidDicomError

    logging.getLogger(
        "pydicom"
    ).propagate = False  # its messages may quote header values: keep them out of logs
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=header_only, force=True)
            if "PixelData" in ds and not header_only:
                _ = ds.PixelData  # read deferred/truncated values now, inside the guard
            return ds
    except FileNotFoundError:
        raise DicomError(path, "file not found") from None
    except IsADirectoryError:
        raise DicomError(path, "a folder, not a DICOM file") from None
    except PermissionError:
        raise DicomError(path, "permission denied") from None
    except InvalidDicomError:
        raise DicomError(path, "not a DICOM file (no DICOM header)") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError,
            NotImplementedError, UnicodeDecodeError, LookupError):  # fmt: skip
        raise DicomError(path, "damaged or truncated DICOM file (the header cannot be parsed)") from None


def read_header(path: str | Path) -> DicomHeader:
    """Geometry, pixel format and :data:`ATTRIBUTES` from the header only (``stop_before_pixels``)."""
    ds = _dcmread(path, header_only=True)
    return _header(path, ds, has_pixels=_has_pixel_tag(path, ds))


#: Header attributes read for subgroup metrics only (cxrlab.evaluation.subgroups); sex and age leave it as
#: counts per group and age band, never per image.
SUBGROUP_KEYWORDS = ("PatientSex", "PatientAge", "ViewPosition", "Manufacturer")


def subgroup_header(path: str | Path) -> dict[str, str]:
    """:data:`SUBGROUP_KEYWORDS` as text from the header only ({} when the header cannot be read)."""
    try:
        ds = _dcmread(path, header_only=True)
    except DicomError:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {k: str(ds.get(k) or "").strip() for k in SUBGROUP_KEYWORDS}


def _has_pixel_tag(path: str | Path, ds: Any) -> bool:
    """Whether a header-only read stopped at Pixel Data (pydicom leaves it out, so look for the tag)."""
    if "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return True
    # stop_before_pixels drops the element: an image has Rows/Columns and ends in (7FE0,0010).
    return "Rows" in ds and "Columns" in ds


def _header(path: str | Path, ds: Any, has_pixels: bool) -> DicomHeader:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = getattr(ds, "file_meta", None)
            syntax = str(getattr(meta, "TransferSyntaxUID", "") or "") if meta is not None else ""
            attributes: dict[str, Any] = {}
            for keyword, name in ATTRIBUTES.items():
                value = ds.get(keyword)
                if keyword == "PixelSpacing" and value is None:
                    value = ds.get("ImagerPixelSpacing")  # CR/DX detectors often give only this one
                attributes[name] = _plain(value)
            attributes["transfer_syntax"] = _syntax_name(syntax)
            pid = ds.get("PatientID")
            return DicomHeader(
                rows=int(ds.get("Rows") or 0),
                columns=int(ds.get("Columns") or 0),
                bits_stored=int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0),
                photometric=str(ds.get("PhotometricInterpretation") or "").strip().upper(),
                transfer_syntax=syntax,
                frames=_frames(ds),
                has_pixels=has_pixels,
                patient_id=str(pid).strip() or None if pid is not None else None,
                attributes=attributes,
            )
    except (ValueError, TypeError, OverflowError, AttributeError, KeyError, IndexError):
        raise DicomError(path, "damaged DICOM header (an image attribute has an invalid value)") from None


def _plain(value: Any) -> Any:
    """A header value as a short JSON-friendly value (multi-values joined with 'x'; empty → None)."""
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "x".join(f"{float(v):g}" for v in value) or None
    if isinstance(value, int | float):
        return value
    text = str(value).strip()
    return text[:64] or None


def _syntax_name(uid: str) -> str:
    if not uid:
        return "unknown"
    require("pydicom", "dicom", "DICOM input")
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name != uid else uid


def _frames(ds: Any) -> int:
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


# --------------------------------------------------------------------------- pixels


def read_dicom(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Decode one single-frame DICOM image into a 2-D ``uint8`` array (module docstring for the steps);
    raise :class:`DicomError` naming the file and the reason when it cannot be used."""
    ds = _dcmread(path, header_only=False)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        # pydicom drops a Pixel Data element cut off by the end of the file (and, when encapsulated, every
        # element before it): the header read alone tells a truncated image from a non-image object.
        head = _dcmread(path, header_only=True) if len(ds) == 0 or "Rows" in ds else ds
        if "Rows" in head and "Columns" in head:
            raise DicomError(path, _TRUNCATED)
        if len(head) == 0:
            raise DicomError(path, "damaged or truncated DICOM file (no data element can be read)")
        raise DicomError(path, f"no pixel data: a non-image DICOM object{_sop_name(head)}; give image files")
    return decode_dataset(ds, path, max_pixels)


def decode_dataset(ds: Any, path: str | Path = "<dataset>", max_pixels: int | None = None) -> np.ndarray:
    """:func:`read_dicom` for a dataset already in memory (e.g. received over the network); ``path``
    names it in messages."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise DicomError(path, "float pixel data (parametric maps) is not a radiograph; give image files")
        raise DicomError(path, f"no pixel data: a non-image DICOM object{_sop_name(ds)}; give image files")
    header = _header(path, ds, has_pixels=True)
    if header.frames > 1:
        raise DicomError(
            path, f"multi-frame DICOM ({header.frames} frames); give single-frame radiographs (one per file)"
        )
    if header.rows <= 0 or header.columns <= 0:
        raise DicomError(path, "damaged DICOM header (no image size)")
    if max_pixels is not None and header.rows * header.columns > max_pixels:
        raise DicomError(
            path,
            f"{header.columns}x{header.rows} exceeds the {max_pixels:,}-pixel limit "
            "(set CXRLAB_MAX_PIXELS to allow larger images)",
        )
    decoder = _check_decoder(path, header)
    raw, photometric = _decode(path, ds, decoder)
    return to_uint8(raw, ds, path, photometric=photometric)


def _decode(path: str | Path, ds: Any, decoder: Any) -> tuple[np.ndarray, str]:
    """The first frame as pydicom's decoder returns it (YBR_FULL/YBR_FULL_422 already converted to RGB,
    ``as_rgb``), with the photometric interpretation of that array."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr, meta = decoder.as_array(ds, index=0, as_rgb=True)
    except MemoryError:
        raise DicomError(path, "pixel data too large to decode in memory") from None
    except Exception as exc:  # noqa: BLE001 - decoder plugins raise anything: one line, never a traceback
        if _is_truncated(ds):
            raise DicomError(path, _TRUNCATED) from None
        raise DicomError(path, _decode_failure(decoder, exc)) from None
    photometric = str(meta.get("photometric_interpretation") or ds.get("PhotometricInterpretation") or "")
    return arr, photometric.strip().upper()


def to_uint8(
    raw: np.ndarray, ds: Any, path: str | Path = "<dataset>", photometric: str | None = None
) -> np.ndarray:
    """Decoded pixels → 8-bit grey (module docstring). ``photometric``: the interpretation of ``raw`` when
    the decoder changed it (pydicom returns YBR_FULL/YBR_FULL_422 as RGB); default the header's."""
    require("pydicom", "dicom", "DICOM input")
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if photometric is None:
        photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    arr = np.asarray(raw)
    if photometric in _COLOUR:
        return _colour_to_gray(arr, ds, path, photometric)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(
            path, f"photometric interpretation {photometric or 'missing'} is neither grayscale nor colour"
        )
    if arr.ndim != 2:
        raise DicomError(path, f"pixel data has shape {arr.shape}; a radiograph is one 2-D frame")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            lo, hi = _modality_range(ds)
            voi = _voi_kind(ds)
            bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
            plain = voi == "none" and not ds.get("ModalityLUTSequence")
            if plain and arr.dtype == np.uint8 and (lo, hi) == (0.0, 255.0):
                out = arr.copy()  # 8 bits stored, identity rescale, no VOI: the stored values are the image
                return 255 - out if photometric == "MONOCHROME1" else out
            values = np.asarray(apply_modality_lut(arr, ds))  # float64 when rescaled
            if voi != "none":
                values = np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True), dtype=np.float64)
                if voi == "lut":
                    lo, hi = 0.0, float(2 ** _lut_bits(ds.VOILUTSequence[0]) - 1)
            elif bits > 8:
                lo, hi = _integer_window(arr, ds) or stored_window(values)
        except DicomError:
            raise
        except Exception as exc:  # noqa: BLE001 - malformed LUTs or windows: one line
            raise DicomError(path, f"invalid Modality/VOI LUT or window ({exc.__class__.__name__})") from None
    out = _scale(values, lo, hi)
    return 255 - out if photometric == "MONOCHROME1" else out


#: Without a VOI LUT or window, > 8-bit images are windowed on these percentiles of their own
#: Modality-LUT output (the darkest and brightest 0.5 % clip), so their contrast survives 8 bits.
PERCENTILES = (0.5, 99.5)

#: ITU-R BT.601 luma weights of R, G, B (colour images become grey as other colour images do).
LUMA = (0.299, 0.587, 0.114)

_COLOUR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR"})


def stored_window(values: np.ndarray) -> tuple[float, float]:
    """The window of an image without a VOI: :data:`PERCENTILES` of its values, or its minimum and
    maximum when those percentiles coincide (a mostly uniform image)."""
    lo, hi = (float(v) for v in np.percentile(values, PERCENTILES))
    if hi <= lo:
        lo, hi = float(np.min(values)), float(np.max(values))
    return lo, hi


def _integer_window(arr: np.ndarray, ds: Any) -> tuple[float, float] | None:
    """:func:`stored_window` of the Modality-LUT output, computed from a histogram of the stored integers
    (``np.percentile``'s linear interpolation, exactly; ~7x faster on a 2048² 12-bit image) and mapped
    through the rescale, which is affine. None where that does not hold (a Modality LUT Sequence, float
    or very wide data): then the caller sorts."""
    from pydicom.pixels import apply_modality_lut

    if arr.dtype.kind not in "iu" or ds.get("ModalityLUTSequence") or arr.size == 0:
        return None
    low, high = int(arr.min()), int(arr.max())
    if high - low > 1 << 20:
        return None
    flat = arr.ravel()
    counts = np.bincount(
        flat - np.asarray(low, dtype=flat.dtype) if low >= 0 else flat.astype(np.int64) - low
    )
    cum = np.cumsum(counts)
    n = int(cum[-1])
    found = []
    for q in PERCENTILES:
        h = (n - 1) * q / 100.0
        f = int(np.floor(h))
        below, above = np.searchsorted(cum, [f, min(f + 1, n - 1)], side="right")
        found.append(low + float(below) + (h - f) * float(above - below))
    if found[1] <= found[0]:
        found = [float(low), float(high)]
    mapped = np.asarray(apply_modality_lut(np.asarray(found, dtype=np.float64), ds), dtype=np.float64)
    lo, hi = sorted(float(v) for v in mapped)
    return lo, hi


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``lo … hi`` linearly onto 0–255, clipped, rounded half up; all zeros when ``hi == lo``."""
    if hi < lo:
        lo, hi = hi, lo
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        if hi <= lo:
            return np.zeros(values.shape, dtype=np.uint8)
    if max(abs(lo), abs(hi)) < 2**24:
        # float32 is exact for the integers of <= 24-bit data and 6x faster here than float64
        values = values.astype(np.float32, copy=False)
        scaled = (values - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    else:
        scaled = (values.astype(np.float64, copy=False) - lo) * (255.0 / (hi - lo))
    np.clip(scaled, 0, 255, out=scaled)
    return (scaled + 0.5).astype(np.uint8)  # round half up; values are finite (integers through LUTs)


def _modality_range(ds: Any) -> tuple[float, float]:
    """The range of values after the Modality LUT (as pydicom's windowing assumes it)."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** _lut_bits(ds.ModalityLUTSequence[0]) - 1)
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    if int(ds.get("PixelRepresentation") or 0) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return lo, hi


def _lut_bits(item: Any) -> int:
    descriptor = item.LUTDescriptor
    bits = int(descriptor[2])
    if bits not in (8, 16):  # the standard allows only 8 or 16; some writers put 12
        data = np.asarray(item.get("LUTData") or [0])
        bits = max(int(np.ceil(np.log2(float(np.max(data)) + 1))), 1)
    return bits


def _voi_kind(ds: Any) -> str:
    """Which VOI transform pydicom's ``apply_voi_lut(prefer_lut=True)`` applies: lut, window or none."""
    if ds.get("VOILUTSequence"):
        return "lut"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return "none"


def _colour_to_gray(arr: np.ndarray, ds: Any, path: str | Path, photometric: str) -> np.ndarray:
    """Colour images → ITU-R 601 luma scaled by the samples' range (``2**BitsStored - 1``; for a palette,
    the LUT entries' ``2**bits - 1``). ``arr`` is RGB as pydicom decodes it (YBR_FULL/422 converted;
    YBR_ICT/YBR_RCT are inverted by the JPEG 2000 decoder), or palette indices."""
    require("pydicom", "dicom", "DICOM input")
    from pydicom.pixels import apply_color_lut, convert_color_space

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if photometric == "PALETTE COLOR":
                arr = apply_color_lut(arr, ds)
                top = float(2 ** int(ds.RedPaletteColorLookupTableDescriptor[2]) - 1)
            else:
                if photometric in ("YBR_FULL", "YBR_FULL_422"):  # only when a caller passes raw YBR
                    arr = convert_color_space(arr, photometric, "RGB")
                top = float(2 ** int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8) - 1)
    except Exception as exc:  # noqa: BLE001 - malformed palettes: one line
        raise DicomError(path, f"colour conversion failed ({exc.__class__.__name__})") from None
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise DicomError(path, f"pixel data has shape {arr.shape}; a radiograph is one 2-D frame")
    rgb = arr.astype(np.float64)
    luma = rgb[..., 0] * LUMA[0] + rgb[..., 1] * LUMA[1] + rgb[..., 2] * LUMA[2]
    return _scale(luma, 0.0, top)


_TRUNCATED = (
    "truncated DICOM file: the header describes an image but its pixel data is missing or cut off "
    "(incomplete download or copy?)"
)


def _is_truncated(ds: Any) -> bool:
    """Native (not encapsulated) pixel data shorter than pydicom's expected length for the header."""
    from pydicom.pixels.utils import get_expected_length

    try:
        syntax = ds.file_meta.TransferSyntaxUID
        if syntax.is_encapsulated:
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return len(ds.PixelData) < get_expected_length(ds)
    except Exception:  # noqa: BLE001 - a header too broken to compute the length: not a truncation verdict
        return False


# pydicom's decoder plugin labels → the module that declares its DECODER_DEPENDENCIES
_PLUGIN_MODULES = {"gdcm": "gdcm", "pylibjpeg": "pylibjpeg", "pillow": "pillow", "pyjpegls": "pyjpegls",
                   "pydicom": "rle"}  # fmt: skip
# import names in those declarations → what pip installs
_PIP_NAMES = {"gdcm": "python-gdcm"}


def decoder_plugins(uid: str) -> list[tuple[str, tuple[str, ...], bool]]:
    """pydicom's decoder plugins for a transfer syntax, in the order it tries them: (plugin label, the pip
    packages it needs, installed). Native syntaxes (no plugin needed) give ``[]``."""
    import importlib

    require("pydicom", "dicom", "DICOM input")
    from pydicom.pixels import get_decoder

    decoder = get_decoder(uid)
    available = set(decoder.available_plugins)
    labels = [*getattr(decoder, "_available", {}), *getattr(decoder, "_unavailable", {})]
    out = []
    for label in labels:
        module = importlib.import_module(f"pydicom.pixels.decoders.{_PLUGIN_MODULES.get(label, label)}")
        needs = module.DECODER_DEPENDENCIES.get(uid, ())
        names = [_PIP_NAMES.get(n, n) for n in (re.split(r"[<>=!~ ]", d)[0] for d in needs) if n != "numpy"]
        out.append((label, tuple(names) or ("pydicom",), label in available))
    return out


#: The packages ``pip install 'cxrlab[dicom]'`` brings (pyproject.toml's ``dicom`` extra).
DICOM_EXTRA = ("pydicom", "python-gdcm", "pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg")


def _install_hint(uid: str) -> str:
    """'pip install A B' (or several alternatives) for the missing decoders of a syntax; '' when none."""
    missing = [pkgs for _, pkgs, ok in decoder_plugins(uid) if not ok]
    if not missing:
        return ""
    hint = "pip install " + " or pip install ".join(" ".join(pkgs) for pkgs in missing)
    extra = [" ".join(pkgs) for pkgs in missing if set(pkgs) <= set(DICOM_EXTRA)]
    if len(extra) == len(missing):
        hint += " (all come with pip install 'cxrlab[dicom]')"
    elif extra:
        hint += f" (pip install 'cxrlab[dicom]' brings {' and '.join(extra)})"
    return hint


def _check_decoder(path: str | Path, header: DicomHeader) -> Any:
    """pydicom's decoder for the file's transfer syntax; refuse one with no (installed) decoder in one
    line naming the syntax and what to install."""
    require("pydicom", "dicom", "DICOM input")
    from pydicom.pixels import get_decoder

    uid = header.transfer_syntax
    if not uid:
        raise DicomError(
            path, "no transfer syntax in the file meta information: the pixel data cannot be read"
        )
    name = _syntax_name(uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise DicomError(path, f"transfer syntax {name} is not supported (no pixel-data decoder)") from None
    if not decoder.is_available:
        raise DicomError(
            path, f"transfer syntax {name} needs a decoder that is not installed: {_install_hint(uid)}"
        )
    return decoder


def _decode_failure(decoder: Any, exc: BaseException) -> str:
    """One complete line: the syntax, each decoder's own reason, and what to install (or: damaged)."""
    uid = str(decoder.UID)
    lines = [" ".join(line.split()) for line in str(exc).splitlines()]
    lines = [line for line in lines if line]
    if lines and lines[0].startswith("Unable to decode as exceptions were raised by all available plugins"):
        why = "; ".join(lines[1:]) or lines[0]  # pydicom lists one 'plugin: reason' line per decoder
    else:
        why = f"{exc.__class__.__name__}: {' '.join(lines)}" if lines else exc.__class__.__name__
    text = f"{_syntax_name(uid)} pixel data cannot be decoded ({why})"
    hint = _install_hint(uid) if decoder.UID.is_encapsulated else ""
    if hint:
        return f"{text}; another decoder may read it: {hint}"
    return f"{text}; the pixel data or its header is probably damaged"


def _sop_name(ds: Any) -> str:
    uid = ds.get("SOPClassUID")
    if not uid:
        return ""
    require("pydicom", "dicom", "DICOM input")
    from pydicom.uid import UID

    name = UID(str(uid)).name
    return f" ({name})" if name and name != str(uid) else ""


# --------------------------------------------------------------------------- patients


def patient_group(patient_id: str, mode: str = "hashed") -> str:
    """The group name of a Patient ID: ``pid-`` + 16 hex digits of HMAC-SHA256(salt, id), or the id as
    is under ``mode="raw"``. The salt: :func:`installation_salt`."""
    if mode == "raw":
        return patient_id
    if mode != "hashed":
        raise DataError(f"data.dicom_patient_ids {mode!r}: choose hashed or raw")
    digest = hmac.new(installation_salt(), patient_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return HASH_PREFIX + digest[:16]


@functools.lru_cache(maxsize=1)
def installation_salt() -> bytes:
    """The secret salt of patient-id hashes: ``$CXRLAB_DICOM_SALT`` when set (share it to get the same
    hashes, hence the same carved splits, on several machines), else a random 32-hex-digit salt kept in
    ``<cache>/dicom-salt`` (created once per installation, mode 0600). When it cannot be kept, a salt for
    this process only is used, with one warning."""
    env = os.environ.get("CXRLAB_DICOM_SALT")
    if env:
        return env.encode("utf-8")
    file = _cache_root() / _SALT_FILE
    try:
        return file.read_bytes().strip() or _new_salt(file)
    except FileNotFoundError:
        pass
    except OSError:
        return _process_salt(file)
    return _new_salt(file)


def _cache_root() -> Path:
    """The cache folder as :func:`cxrlab.data.cache.default_cache_dir` finds it without ``--cache-dir``
    (not imported: that module imports this one through cxrlab.data.images)."""
    env = os.environ.get("CXRLAB_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cxrlab"


def _new_salt(file: Path) -> bytes:
    salt = secrets.token_hex(16).encode()
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(salt)
        return salt
    except FileExistsError:  # another process made it first: use theirs
        return file.read_bytes().strip() or _process_salt(file)
    except OSError:
        return _process_salt(file)


def _process_salt(file: Path) -> bytes:
    print(
        f"warning: cannot keep the DICOM patient-id salt in {file}; patient ids are hashed with a salt for "
        "this process only (set CXRLAB_DICOM_SALT to keep hashes and carved splits stable)",
        file=sys.stderr,
    )
    return secrets.token_hex(16).encode()
