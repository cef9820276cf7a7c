"""Figures shared by every page: matplotlib set up for files (Agg, 150 dpi) and image grids drawn with PIL.

The one place that saves a figure; evaluation plots, the audit, the comparison and the generative
pages all draw through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from PIL.Image import Image

DPI = 150

__all__ = ["DPI", "grid_picture", "image_grid", "plt", "sample_grid", "sample_picture", "save_figure"]


def save_figure(fig, path: Path) -> Path:
    """Lay out, write as PNG at :data:`DPI` (folders created) and close a matplotlib figure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
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
