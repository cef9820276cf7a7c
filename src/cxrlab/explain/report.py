"""Where the model looks, for a run's reports: a Grad-CAM gallery and the lung-attention score on test images.

Called by the pipeline at the end of ``cxr train`` and ``cxr evaluate`` with the test images it has just
scored. The heatmaps come from the *saved* model (``model.safetensors`` rebuilt by
:func:`cxrlab.evaluation.inference.load_run`), so a fast-path run (frozen backbone, cached features) is
explained with its full network. Cost is bounded: heatmaps for the gallery (at most two images per class)
and for at most ``eval.explain_images`` test images (a seeded sample, taken in turn from each true class).

* **Gallery** — per predicted class, the most confident correct call and the most confident wrong call,
  each with its Grad-CAM heatmap for that class (thumbnails in ``plots/gallery/``).
* **Lung attention** — per predicted class, the mean share of the heatmaps' mass inside the lung fields
  (shipped segmenter, :mod:`cxrlab.explain.lungs`) with its 95% bootstrap CI, the lung area (the share an
  evenly spread heatmap would get), and a warning when the mean share is below
  :data:`~cxrlab.explain.score.MIN_LUNG_SHARE`.

Cheap by construction (docs/benchmarks.md §10.1): the heatmaps come in batches from one backbone forward
without gradients plus the head's backward (:class:`~cxrlab.explain.cam.CamEngine`), each image is segmented
once, and cxrlab's cache (``--cache-dir``, ``$CXRLAB_CACHE_DIR``) keeps each image's lung probabilities and,
for a frozen backbone, its activations — so a warm run, or ``cxr evaluate`` of the same images, runs neither
the backbone nor the segmenter. ``cache`` in the result counts what came from it.

A run whose model has no Grad-CAM target layer (an MLP), a multi-label run, a run on autoencoder codes and
``eval.explain=off`` get a note instead of a gallery and score.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab._optional import available, message
from cxrlab.errors import CxrError
from cxrlab.evaluation.inference import LoadedRun
from cxrlab.explain.methods import DEFAULT_METHOD
from cxrlab.explain.score import MIN_LUNG_SHARE

#: The lung score needs images at least this large (the segmenter reads 128 px; below 64 px it guesses).
MIN_SIZE = 64
#: Side of the gallery's overlay thumbnails (pixels).
THUMB = 160
#: Test images per batch of heatmaps and lung masks (the progress bar's step).
CHUNK = 32
GALLERY = Path("plots") / "gallery"


def skipped(note: str, status: str = "skipped") -> dict[str, dict[str, Any]]:
    """metrics.json's ``gallery`` and ``lung_attention`` when neither is made, with the reason."""
    return {"gallery": {"status": status, "note": note}, "lung_attention": {"status": status, "note": note}}


def why_not(loaded: LoadedRun, setting: str) -> tuple[str, str] | None:
    """``(status, note)`` when a run gets no gallery and score (before any heatmap is computed), else None."""
    if setting == "off":
        return "off", "turned off (eval.explain=off)"
    if loaded.meta.get("input") == "codes":
        return "skipped", "not made for a model trained on autoencoder codes (no image to overlay)"
    if loaded.meta.get("task") == "multilabel":
        return "skipped", (
            "not made for multi-label runs; explain one finding with "
            "`cxr explain RUN IMAGES --class FINDING --out DIR`"
        )
    if not available("pytorch_grad_cam"):  # the base install: the report says what to install
        return "skipped", message("the Grad-CAM gallery", "pytorch_grad_cam", "explain")
    return None


def attention_report(
    loaded: LoadedRun,
    images: np.ndarray,
    paths: list[str],
    labels: np.ndarray,
    probs: np.ndarray,
    preds: np.ndarray,
    folder: Path,
    setting: str = "auto",
    max_images: int = 100,
    seed: int = 0,
    n_boot: int = 1000,
    min_share: float = MIN_LUNG_SHARE,
    progress: bool = True,
    method: str = DEFAULT_METHOD,
    patients: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """metrics.json's ``gallery`` and ``lung_attention`` for the test images ``images`` (uint8, the
    classifier's geometry) with true ``labels``, calibrated ``probs`` and thresholded ``preds``; gallery
    thumbnails are written to ``folder/plots/gallery/`` (paths in the result relative to ``folder``).
    ``progress``: a progress bar over the heatmaps (on a terminal only), once they are being computed;
    ``method``: the CAM method (:data:`cxrlab.explain.methods.METHODS`, ``eval.explain_method``);
    ``patients``: each test image's patient (the lung share's CI resamples patients; None: images)."""
    from cxrlab.explain.cam import CamEngine, upsample
    from cxrlab.explain.lungs import Segmenter, square_gray
    from cxrlab.explain.methods import get_method
    from cxrlab.explain.score import lung_share
    from cxrlab.runtime import progress as progress_bar

    started = time.perf_counter()
    shutil.rmtree(folder / GALLERY, ignore_errors=True)  # an earlier evaluation's thumbnails
    reason = why_not(loaded, setting)
    if reason is not None:
        return skipped(reason[1], reason[0])
    if not len(images):
        return skipped("no test images")
    cam_method = get_method(method, "eval.explain_method")  # an unknown name: the command's one line
    cache = _cache_folder(loaded)
    # a frozen backbone's activations are the same in every run on its weights: worth keeping
    frozen = loaded.cfg.model.freeze == "backbone"
    try:
        # on the CPU (`cxr evaluate` may have moved the model to a GPU), fp32, gradients from the layer up
        engine = CamEngine.for_run(loaded, cam_method.name, cache=cache if frozen else None)
    except CxrError as exc:
        return skipped(f"no {cam_method.label} target layer: {exc}")
    layer_name = engine.layer_name
    meta, classes = loaded.meta, loaded.classes
    size = int(meta["image_size"])
    preds = np.asarray(preds, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    gallery_idx = _gallery_picks(labels, probs, preds, len(classes))
    score_lungs = size >= MIN_SIZE
    sample = _sample(labels, max_images, seed) if score_lungs else np.zeros(0, dtype=np.int64)
    wanted = sorted(set(sample.tolist()) | {i for pair in gallery_idx for i in pair if i is not None})
    seg = Segmenter.load()

    cams: dict[int, np.ndarray] = {}
    lungs: dict[int, np.ndarray] = {}  # lung probability at the segmenter's size
    what = f"explaining test images ({cam_method.label}" + (", lung attention)" if score_lungs else ")")
    bar = progress_bar(desc=what, total=len(wanted), quiet=not progress)
    for start in range(0, len(wanted), CHUNK):
        part = wanted[start : start + CHUNK]
        maps = engine(images[part], [int(preds[i]) for i in part])  # one batch: forward, head backward
        small = np.stack([square_gray(images[i], seg.size) for i in part])
        for i, cam, lung in zip(part, maps, seg.predict_cached(small, cache), strict=True):
            cams[i], lungs[i] = cam, lung
        bar.update(len(part))
    bar.close()
    shares: dict[int, tuple[float | None, float]] = {}

    def share_of(i: int) -> tuple[float | None, float]:
        if i not in shares:  # the gallery's images are in the sample too: one mask each
            mask = upsample(lungs[i], size) > 0.5
            shares[i] = lung_share(cams[i], mask), float(mask.mean())
        return shares[i]

    gallery = _gallery(gallery_idx, images, paths, labels, probs, classes, cams, lungs, folder, share_of)
    out: dict[str, dict[str, Any]] = {
        "gallery": {
            "status": "done",
            "method": cam_method.name,
            "layer": layer_name,
            "selection": "per predicted class: the most confident correct and the most confident wrong "
            "test image; heatmap for the predicted class",
            "classes": gallery,
        }
    }
    if score_lungs:
        out["lung_attention"] = _lung_summary(
            sample, labels, preds, classes, share_of, len(images), max_images, seed, n_boot, min_share, seg,
            patients,
        )  # fmt: skip
        out["lung_attention"].update(method=cam_method.name, layer=layer_name)
    else:
        out["lung_attention"] = {
            "status": "skipped",
            "note": f"images of {size} px are too small for the lung segmenter (needs {MIN_SIZE} px or more)",
        }
    seconds = round(time.perf_counter() - started, 2)
    out["gallery"]["seconds"] = out["lung_attention"]["seconds"] = seconds
    out["gallery"]["cache"] = out["lung_attention"]["cache"] = {
        "images": len(wanted),
        "activations_from_cache": engine.cache_hits,  # frozen backbones only
        "lung_masks_from_cache": seg.cache_hits,
    }
    return out


def _cache_folder(loaded: LoadedRun) -> Path | None:
    """cxrlab's cache folder as the run's data stage finds it (``--cache-dir``, ``$CXRLAB_CACHE_DIR``, the
    user cache), or None where it cannot be written (then everything is computed, as without a cache)."""
    from cxrlab.data.cache import ImageCache

    cache = ImageCache(loaded.cfg.data.cache_dir)
    return cache.root if cache.enabled else None


def _gallery_picks(
    labels: np.ndarray, probs: np.ndarray, preds: np.ndarray, k: int
) -> list[tuple[int | None, int | None]]:
    """Per class c: (most confident correct call of c, most confident wrong call of c) as test indices."""
    picks = []
    for c in range(k):
        called = preds == c
        pair: list[int | None] = []
        for hit in (labels == c, labels != c):
            idx = np.flatnonzero(called & hit)
            pair.append(int(idx[np.argmax(probs[idx, c])]) if len(idx) else None)
        picks.append((pair[0], pair[1]))
    return picks


def _sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """All test indices, or ``n`` of them: a seeded shuffle per true class, taken in turn from each."""
    if len(labels) <= n:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    out: list[int] = []
    while len(out) < n:
        for q in queues:
            if q and len(out) < n:
                out.append(int(q.pop(0)))
    return np.array(sorted(out), dtype=np.int64)


def _gallery(picks, images, paths, labels, probs, classes, cams, lungs, folder, share_of) -> list[dict]:
    from PIL import Image

    from cxrlab.explain.cam import overlay
    from cxrlab.explain.lungs import square_gray

    (folder / GALLERY).mkdir(parents=True, exist_ok=True)
    rows = []
    for c, pair in enumerate(picks):
        row: dict[str, Any] = {"class": classes[c]}
        for kind, i in zip(("correct", "wrong"), pair, strict=True):
            if i is None:
                row[kind] = None
                continue
            thumb = GALLERY / f"class{c}_{kind}.png"
            thumbnail = overlay(square_gray(images[i], THUMB), cams[i], lungs[i] > 0.5)
            Image.fromarray(thumbnail).save(folder / thumb)
            share, _ = share_of(i)
            row[kind] = {
                "image": str(paths[i]),
                "true": classes[int(labels[i])],
                "predicted": classes[c],
                "probability": round(float(probs[i, c]), 4),
                "lung_share": None if share is None else round(share, 3),
                "thumbnail": str(thumb),
            }
        rows.append(row)
    return rows


def _lung_summary(
    sample, labels, preds, classes, share_of, n_test, max_images, seed, n_boot, min_share, seg, patients=None
) -> dict[str, Any]:
    from cxrlab.explain.score import mean_ci, summarise, warnings_for

    rows = []
    for i in sample:
        share, area = share_of(int(i))
        rows.append({"class": classes[int(preds[i])], "true": classes[int(labels[i])],
                     "lung_share": share, "lung_area": area,
                     "patient": patients[int(i)] if patients else ""})  # fmt: skip
    by_class = summarise(rows, "class", min_share, n_boot)
    scored = [r for r in rows if r["lung_share"] is not None]
    groups = [r["patient"] for r in scored] if patients else None
    mean, ci = mean_ci([r["lung_share"] for r in scored], n_boot, groups=groups) if scored else (None, None)
    return {
        "status": "done",
        "n": len(rows),
        "of": n_test,
        "sample": "all test images"
        if len(rows) == n_test
        else f"{len(rows)} of {n_test} test images, seeded sample (seed {seed}, in turn per true class; "
        f"eval.explain_images={max_images})",
        "seed": seed,
        "grouped_by": "predicted class (the class each heatmap explains)",
        "min_share": min_share,
        "ci_unit": "patient" if patients else "image",  # what the CIs resample
        "overall": {
            "n": len(scored),
            "empty": len(rows) - len(scored),
            "lung_share": None if mean is None else round(mean, 4),
            "ci95": None if ci is None else [round(c, 4) for c in ci],
        },
        "by_class": by_class,
        "warnings": warnings_for(by_class, "class", min_share),
        "segmenter": {
            "weights": "shipped (cxrlab/explain/assets/lungs.safetensors)",
            "dice_heldout": seg.card.get("dice_heldout", {}).get("mean"),
            "input_size": seg.size,
        },
    }


def for_run(
    loaded: LoadedRun, images: np.ndarray | None, folder: Path, warn: Any = None, progress: bool = True
) -> dict[str, dict[str, Any]]:
    """The gallery and lung-attention score of ``folder`` (a run folder after training, or a ``cxr evaluate``
    output folder): ``folder/predictions.csv`` gives each test image's path, true class, probabilities and
    thresholded prediction, in the order of ``images``; settings come from the run's ``eval`` section;
    ``progress``: the heatmaps' progress bar (on a terminal only).

    Never fails the command it ends: an unexpected error becomes a note (and a line to ``warn``)."""
    from cxrlab.runs import read_csv

    cfg = loaded.cfg
    reason = why_not(loaded, cfg.eval.explain)
    if reason is not None or images is None:
        shutil.rmtree(folder / GALLERY, ignore_errors=True)
        return skipped(*((reason[1], reason[0]) if reason else ("no test images",)))
    try:
        rows = read_csv(folder / "predictions.csv")
        classes = loaded.classes
        if len(rows) != len(images):
            raise ValueError(f"predictions.csv has {len(rows)} rows for {len(images)} test images")
        probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows], dtype=np.float64)
        labels = np.array([classes.index(r["true"]) for r in rows], dtype=np.int64)
        preds = np.array([classes.index(r["pred"]) for r in rows], dtype=np.int64)
        patients = [r.get("patient") or "" for r in rows]  # predictions.csv names them where the data does
        return attention_report(
            loaded, images, [r["path"] for r in rows], labels, probs, preds, folder, cfg.eval.explain,
            cfg.eval.explain_images, cfg.train.seed, cfg.eval.bootstrap or 1000, progress=progress,
            method=cfg.eval.explain_method, patients=patients if all(patients) else None,
        )  # fmt: skip
    except Exception as exc:  # the run is trained and scored: a failed gallery must not fail it
        note = f"failed: {exc.__class__.__name__}: {exc}"
        if warn is not None:
            warn(f"warning: gallery and lung-attention score {note}")
        return skipped(note, "failed")
