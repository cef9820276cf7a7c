"""Figures shared by every page: matplotlib set up for files (Agg, 150 dpi) and image grids drawn with PIL.

The one place that saves a figure; evaluation plots, the audit, the comparison and the generative
pages all draw through it. A run's plots follow ``eval.figure_format`` / ``eval.figure_dpi`` through
:func:`figure_output` (PNG, SVG, or PDF with a PNG rendition beside it for the HTML pages).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

# Files need no window: Agg. A Jupyter kernel keeps its own (inline) backend, or the notebook's plots would
# stop showing once cxrlab is used; save_figure closes every figure it writes, so none of cxrlab's appear.
if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from PIL.Image import Image

DPI = 150
#: File formats a figure can be saved in (``eval.figure_format``).
FIGURE_FORMATS = ("png", "svg", "pdf")

__all__ = [
    "DPI", "FIGURE_FORMATS", "figure_output", "grid_picture", "image_grid", "plt", "sample_grid",
    "sample_picture", "save_figure",
]  # fmt: skip

_OUTPUT: ContextVar[tuple[str, int]] = ContextVar("figure_output", default=("png", DPI))
# reproducible vector files: no creation date, fixed SVG ids; TrueType (Type 42) fonts in PDF, as journals ask
_VECTOR_RC = {"svg.hashsalt": "cxrlab", "pdf.fonttype": 42}
_NO_DATE = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}


@contextmanager
def figure_output(fmt: str = "png", dpi: int = DPI) -> Iterator[None]:
    """Within the block, :func:`save_figure` writes ``fmt`` (one of :data:`FIGURE_FORMATS`) at ``dpi``."""
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"figure format {fmt!r}: give one of {', '.join(FIGURE_FORMATS)}")
    token = _OUTPUT.set((fmt, int(dpi)))
    try:
        yield
    finally:
        _OUTPUT.reset(token)


def save_figure(fig, path: Path) -> Path:
    """Lay out, write (folders created) and close a matplotlib figure; return the file written.

    PNG at :data:`DPI` unless inside :func:`figure_output`: then ``path`` with that format's suffix, at its
    dpi; a PDF gets a PNG of the same name beside it, the rendition the HTML pages embed."""
    fmt, dpi = _OUTPUT.get()
    path = Path(path).with_suffix(f".{fmt}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    if fmt == "png":
        fig.savefig(path, dpi=dpi)
    else:
        with matplotlib.rc_context(_VECTOR_RC):
            fig.savefig(path, format=fmt, dpi=dpi, metadata=_NO_DATE[fmt])
        if fmt == "pdf":
            fig.savefig(path.with_suffix(".png"), dpi=dpi)
    plt.close(fig)
    return path


def sample_grid(
    images: np.ndarray, labels: np.ndarray, classes: list[str], path: Path, per_class: int = 6
) -> Path:
    """A few images per class, as the model sees them (after resizing), as a PNG."""
    return _save_picture(sample_picture(images, labels, classes, per_class), path)


def sample_picture(images: np.ndarray, labels: np.ndarray, classes: list[str], per_class: int = 6) -> Image:
    """The picture of :func:`sample_grid` as a PIL image (grey), e.g. for TensorBoard."""
    rows = [images[np.flatnonzero(labels == c)[:per_class]] for c in range(len(classes))]
    return grid_picture(rows, row_titles=classes)


def image_grid(
    rows: list[np.ndarray] | tuple[np.ndarray, ...],
    path: Path,
    row_titles: list[str] | None = None,
    title: str = "",
    cell: int = 112,
) -> Path:
    """Rows of uint8 grey images ``(n, H, W)`` as one PNG (see :func:`grid_picture`)."""
    return _save_picture(grid_picture(rows, row_titles, title, cell), path)


def grid_picture(
    rows: list[np.ndarray] | tuple[np.ndarray, ...],
    row_titles: list[str] | None = None,
    title: str = "",
    cell: int = 112,
) -> Image:
    """Rows of uint8 grey images ``(n, H, W)`` as one PIL image, ``cell`` pixels per image; rows may
    differ in length. Drawn with PIL: milliseconds, where a matplotlib figure of 30 axes takes a second."""
    from PIL import Image as PILImage
    from PIL import ImageDraw, ImageFont

    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=13)
    except (OSError, TypeError):  # Pillow without FreeType: the small bitmap font
        font = ImageFont.load_default()
    gap, head = 4, 18 if row_titles else 0
    top = 24 if title else 0
    ncol = max(1, max((len(r) for r in rows), default=0))
    canvas = PILImage.new("L", (gap + ncol * (cell + gap), top + len(rows) * (head + cell + gap) + gap), 255)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, 4), title, fill=0, font=font)
    for i, row in enumerate(rows):
        y = top + gap + i * (head + cell + gap)
        if row_titles:
            draw.text((gap, y), str(row_titles[i]), fill=0, font=font)
        for j, image in enumerate(row):
            tile = PILImage.fromarray(np.asarray(image, dtype=np.uint8))
            tile = tile.resize((cell, cell), PILImage.Resampling.BILINEAR)
            canvas.paste(tile, (gap + j * (cell + gap), y + head))
    return canvas


def _save_picture(picture: Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, format="PNG", optimize=False)
    return path
