"""Images already in memory — numpy arrays, torch tensors, PIL images — decoded the way a file is.

:func:`cxrlab.data.images.load_gray` turns a file into an ``(size, size)`` uint8 grey array: PIL opens it,
EXIF orientation is applied, :func:`~cxrlab.data.images.to_gray` converts it (ITU-R 601 luma for colour,
alpha composited on black, 16-bit data stretched to 0–255), :func:`~cxrlab.data.images.resize_square`
resizes it. :func:`from_memory` makes a PIL image of the same mode from an in-memory image, and
:meth:`MemoryImage.gray` runs the same two last steps, so an image gives the same pixels whether it comes
as a path or as the array read from that file.

What is accepted (anything else is one line, :class:`~cxrlab.errors.DataError`):

* **numpy arrays**, height × width first (as PIL, imageio and OpenCV give them): ``H×W`` grey,
  ``H×W×1``, ``H×W×3`` RGB or ``H×W×4`` RGBA; dtype ``uint8`` (0–255), ``uint16`` (``H×W`` only: read as a
  16-bit file is, stretched from its minimum to its maximum) or float (``float16/32/64`` in [0, 1], taken as
  ``round(255 · x)``). Other integer types (``int64`` from ``np.array`` of Python ints…) are refused rather
  than guessed at: ``a.astype(np.uint8)``.
* **torch tensors**, channels first (as torchvision gives them): ``H×W``, ``1×H×W``, ``3×H×W`` or
  ``4×H×W``; ``uint8`` or float in [0, 1], on any device.
* **PIL images** of any mode (EXIF orientation honoured, as for files).

A JPEG *file* is decoded by libjpeg straight to grey (and at a reduced DCT scale when it is much larger
than the model's input, :func:`~cxrlab.data.images.load_gray`); the RGB array of the same file can differ
from that by a grey level here and there. Lossless files (PNG, TIFF, BMP…) give identical pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from cxrlab.data.images import MAX_PIXELS, resize_square, to_gray
from cxrlab.errors import DataError

ACCEPTED = "image paths, numpy arrays, torch tensors or PIL images"


@dataclass(frozen=True)
class MemoryImage:
    """An in-memory image made ready to decode: ``name`` stands for it in results (``str()`` gives it)."""

    name: str
    image: Image.Image

    def __str__(self) -> str:
        return self.name

    def gray(self, size: int, resize: str = "squash") -> np.ndarray:
        """The ``(size, size)`` uint8 grey array :func:`~cxrlab.data.images.load_gray` makes of a file."""
        return resize_square(to_gray(self.image), size, resize)


def is_memory_image(obj: Any) -> bool:
    """True for a numpy array, a torch tensor or a PIL image (without importing torch)."""
    return isinstance(obj, np.ndarray | Image.Image) or _is_tensor(obj)


def _is_tensor(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == "torch" and hasattr(obj, "detach")


def kind(obj: Any) -> str:
    """``numpy.ndarray``, ``torch.Tensor``, ``PIL.Image`` or the type's name, for messages and names."""
    if isinstance(obj, np.ndarray):
        return "numpy.ndarray"
    if isinstance(obj, Image.Image):
        return "PIL.Image"
    if _is_tensor(obj):
        return "torch.Tensor"
    return type(obj).__name__


def from_memory(obj: Any, name: str) -> MemoryImage:
    """A :class:`MemoryImage` of ``obj``; ``name`` names it in errors and results. One line when ``obj``
    cannot be an image (type, shape, dtype, value range)."""
    if isinstance(obj, Image.Image):
        image = ImageOps.exif_transpose(obj)
    elif isinstance(obj, np.ndarray):
        image = _from_array(obj, name, channels_first=False)
    elif _is_tensor(obj):
        tensor = obj.detach().cpu()
        if str(tensor.dtype) in ("torch.bfloat16", "torch.float16"):  # numpy has no bfloat16
            tensor = tensor.float()
        image = _from_array(tensor.numpy(), name, channels_first=True)
    else:
        raise DataError(f"{name} is a {kind(obj)}; give {ACCEPTED}")
    if image.width == 0 or image.height == 0:
        raise DataError(f"{name} is empty ({image.width}x{image.height} pixels)")
    if image.width * image.height > MAX_PIXELS:
        raise DataError(
            f"{name}: {image.width}x{image.height} exceeds the {MAX_PIXELS:,}-pixel limit "
            "(set CXRLAB_MAX_PIXELS to allow larger images)"
        )
    return MemoryImage(name, image)


def _from_array(a: np.ndarray, name: str, channels_first: bool) -> Image.Image:
    what = "a tensor" if channels_first else "an array"
    layout = "H×W, 1×H×W, 3×H×W or 4×H×W" if channels_first else "H×W, H×W×1, H×W×3 or H×W×4"
    if a.ndim == 3 and channels_first:
        if a.shape[0] not in (1, 3, 4):
            hint = " (channels last? tensors are channels first: x.permute(2, 0, 1))" if a.shape[-1] in (
                1, 3, 4) else ""  # fmt: skip
            raise DataError(f"{name}: {what} of shape {tuple(a.shape)}; give {layout}{hint}")
        a = np.moveaxis(a, 0, -1)
    elif a.ndim == 3 and a.shape[-1] not in (1, 3, 4):
        hint = (" (channels first? numpy arrays are channels last: np.moveaxis(a, 0, -1))"
                if a.shape[0] in (1, 3, 4) else "")  # fmt: skip
        raise DataError(f"{name}: {what} of shape {a.shape}; give {layout}{hint}")
    elif a.ndim not in (2, 3):
        batch = " (a batch: pass a list of images, e.g. list(batch))" if a.ndim == 4 else ""
        raise DataError(f"{name}: {what} of shape {tuple(a.shape)}; give {layout}{batch}")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    a = np.ascontiguousarray(a)
    if a.dtype == np.uint8:
        return Image.fromarray(a, {2: "L", 3: "RGB", 4: "RGBA"}[a.ndim if a.ndim == 2 else a.shape[-1]])
    if a.dtype == np.uint16:
        if a.ndim != 2:
            raise DataError(f"{name}: a uint16 image must be grey (H×W), as a 16-bit file is; got {a.shape}")
        return Image.fromarray(a.astype(np.int32), "I")  # to_gray stretches it as it does a 16-bit file
    if np.issubdtype(a.dtype, np.floating):
        finite = np.isfinite(a)
        if not finite.all():
            raise DataError(f"{name}: a float image with {int((~finite).sum()):,} NaN or infinite values")
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0 or hi > 1:
            raise DataError(
                f"{name}: a float image with values from {lo:.4g} to {hi:.4g}; float images must lie in "
                "[0, 1] (uint8: 0-255) — undo any normalisation first"
            )
        return _from_array(np.rint(a.astype(np.float64) * 255.0).astype(np.uint8), name, False)
    raise DataError(
        f"{name}: {what} of dtype {a.dtype}; give uint8 (0-255), uint16 (grey) or float in [0, 1] "
        "(e.g. a.astype(np.uint8))"
    )
