"""Per image: the heatmap (the one engine, :class:`~cxrlab.explain.cam.CamEngine`), its overlay PNG and the
lung-attention share for a loaded run.

Used by ``cxr explain`` (masks from the image files or the user's mask files), ``cxr predict --explain``
(masks from the image files, exactly as ``cxr explain`` makes them) and ``cxr serve`` (masks from the decoded
upload, which never touches disk).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.evaluation.inference import LoadedRun


class Explainer:
    """A run's :class:`~cxrlab.explain.cam.CamEngine` (the one heatmap engine: method, target layer,
    gradient-enabled fp32 copy) and the lung segmenter: heatmap, overlay and lung share per image."""

    def __init__(
        self,
        loaded: LoadedRun,
        method: str = "gradcam",
        layer: str | None = None,
        segmenter: str | Path | None = None,
    ):
        from cxrlab.explain.cam import CamEngine
        from cxrlab.explain.lungs import Segmenter

        self.loaded = loaded
        self.engine = CamEngine.for_run(loaded, method, layer)
        self.method = self.engine.method.name
        self.layer_name = self.engine.layer_name
        self.seg = Segmenter.load(segmenter)
        meta = loaded.meta
        self.size, self.resize = int(meta["image_size"]), meta.get("resize", "squash")
        self.display = max(self.size, 256)  # overlay side, as `cxr explain` writes it
        self.multilabel = self.engine.multilabel

    def target(self, probs: np.ndarray) -> int:
        """The class a heatmap explains: the decision at the saved threshold (multi-label: the most
        probable finding), as ``cxr explain`` chooses it."""
        from cxrlab.evaluation.evaluate import thresholded

        if self.multilabel:
            return int(np.argmax(probs))
        op = self.loaded.meta.get("operating_point") or {}
        return int(thresholded(np.asarray(probs)[None, :], op, self.loaded.classes)[0])

    def cams(self, images: np.ndarray, targets: list[int]) -> np.ndarray:
        """Heatmaps ``(N, S, S)`` in [0, 1] for uint8 images ``(N, S, S)`` at the run's input size."""
        return self.engine(images, targets)

    def describe(self, cam: np.ndarray, mask: np.ndarray, gray: np.ndarray | None, outline: np.ndarray,
                 target: int) -> dict[str, Any]:  # fmt: skip
        """``png`` (the overlay over ``gray``, bytes; None without ``gray``), ``lung_share`` (None for an
        all-zero heatmap), ``lung_area``, ``class``, ``method`` and ``layer`` of one heatmap."""
        from PIL import Image

        from cxrlab.explain.cam import overlay
        from cxrlab.explain.score import lung_share

        share = lung_share(cam, mask)
        png = None
        if gray is not None:
            buf = io.BytesIO()
            Image.fromarray(overlay(gray, cam, outline)).save(buf, format="PNG")
            png = buf.getvalue()
        return {
            "png": png,
            "lung_share": None if share is None else round(share, 4),
            "lung_area": round(float(mask.mean()), 4),
            "class": self.loaded.classes[target],
            "method": self.method,
            "layer": self.layer_name,
        }

    def for_array(self, image: np.ndarray, display: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
        """One decoded image (``image`` at the run's size, ``display`` the same picture at
        :attr:`display` px): lung mask from ``display``, heatmap of :meth:`target`."""
        k = self.target(probs)
        cam = self.cams(image[None], [k])[0]
        mask = self.seg.mask_for_array(display, self.size)
        outline = self.seg.mask_for_array(display, self.display)
        return self.describe(cam, mask, display, outline, k)

    def __call__(self, image: np.ndarray, display: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
        """:meth:`for_array` (the per-image explainer ``cxr serve`` plugs in)."""
        return self.for_array(image, display, probs)

    def for_files(self, paths: list[str], images: np.ndarray, targets: list[int]) -> list[dict[str, Any]]:
        """Image files already decoded (``images``), heatmaps of class indices ``targets``: masks and
        overlay from the files, as ``cxr explain`` makes them (same shares for the same images, method and
        layer)."""
        from cxrlab.data.images import load_gray

        cams = self.cams(images, targets)
        out = []
        for path, cam, k in zip(paths, cams, targets, strict=True):
            mask = self.seg.mask_for(path, self.size, self.resize)
            outline = self.seg.mask_for(path, self.display, self.resize)
            gray = load_gray(path, self.display, self.resize)
            out.append(self.describe(cam, mask, gray, outline, k))
        return out


def explain_predictions(
    explainer: Explainer, results: list[dict[str, Any]], out: Path, used: set[str]
) -> None:
    """Add ``lung_share``, ``lung_area``, ``heatmap_class`` and ``overlay`` to each predicted result of
    ``cxr predict`` (``{"image", "class", "probabilities"}``) and write its overlay ``out/<name>.png``; the
    heatmap explains the predicted class (multi-label: the most probable finding)."""
    from cxrlab.data.images import load_gray

    classes = explainer.loaded.classes
    good = [r for r in results if "class" in r]
    for start in range(0, len(good), 16):
        part = good[start : start + 16]
        images = np.stack([load_gray(r["image"], explainer.size, explainer.resize) for r in part])
        targets = [
            int(np.argmax([r["probabilities"][c] for c in classes]))
            if explainer.multilabel
            else classes.index(r["class"])
            for r in part
        ]
        for r, heat in zip(
            part, explainer.for_files([r["image"] for r in part], images, targets), strict=True
        ):
            name = unique_name(r["image"], used)
            (out / f"{name}.png").write_bytes(heat["png"])
            r.update(
                lung_share=heat["lung_share"], lung_area=heat["lung_area"], heatmap_class=heat["class"],
                overlay=f"{name}.png",
            )  # fmt: skip


def unique_name(path: str, used: set[str]) -> str:
    """A file stem for ``path``'s overlay, unique among ``used`` (the parent folder's name prefixed on a
    clash, then a counter)."""
    stem = Path(path).stem or "image"
    name, parent = stem, Path(path).parent.name
    if name in used and parent:
        name = f"{parent}_{stem}"
    i = 2
    base = name
    while name in used or name == "summary":
        name, i = f"{base}_{i}", i + 1
    used.add(name)
    return name
