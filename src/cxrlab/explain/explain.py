"""``cxr explain``: heatmaps, overlays and the lung-attention score for a run's model on a set of images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.errors import CxrError
from cxrlab.explain.score import MIN_LUNG_SHARE

OUT_ENTRIES = ("*.png", "*.json", "explain.csv")
CHUNK = 16


def explain(
    run: str | Path,
    images: list[str],
    out: str | Path,
    method: str = "gradcam",
    layer: str | None = None,
    target: str | None = None,
    masks: str | Path | None = None,
    segmenter: str | Path | None = None,
    min_share: float = MIN_LUNG_SHARE,
    overwrite: bool = False,
    n_boot: int = 2000,
    warn: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Explain each image with ``method`` at ``layer`` for ``target`` (default: the predicted class) and
    write ``<name>.png`` (overlay), ``<name>.json``, ``explain.csv`` and ``summary.json`` to ``out``.

    Returns the summary: settings, lung share per explained class and per image folder (mean, 95%
    bootstrap CI, mean lung area), warnings, and the count of images skipped (each reported to ``warn``)."""

    from cxrlab.evaluation.inference import _decode, expand_inputs, image_run, predict_arrays
    from cxrlab.explain.inline import Explainer, unique_name
    from cxrlab.explain.lungs import find_user_mask, user_mask
    from cxrlab.explain.methods import get_method
    from cxrlab.explain.score import summarise, warnings_for
    from cxrlab.runs import check_out_path, claim_folder, write_csv, write_json

    get_method(method)  # an unknown --method: one line before the run loads
    loaded = image_run(run)
    classes = loaded.classes
    if target is not None and target not in classes:
        raise CxrError(f"--class {target!r} is not a class of this model; it has: {', '.join(classes)}")
    masks_dir = Path(masks) if masks is not None else None
    if masks_dir is not None and not masks_dir.is_dir():
        raise CxrError(f"--masks {masks}: not a folder; give a folder of mask images named like the images")
    if not 0 < min_share < 1:
        raise CxrError(f"--min-share {min_share}: give a share between 0 and 1 (default {MIN_LUNG_SHARE})")
    explainer = Explainer(loaded, method, layer, segmenter)
    seg, method_key, layer_name = explainer.seg, explainer.method, explainer.layer_name
    paths = expand_inputs(images)
    if not paths:
        raise CxrError("no images given")
    meta = loaded.meta
    size, resize = int(meta["image_size"]), meta.get("resize", "squash")
    multilabel = explainer.multilabel

    decoded: list[tuple[str, np.ndarray]] = []
    skipped = 0
    for p in paths:
        arr = p if isinstance(p, dict) else _decode(p, size, resize)
        if isinstance(arr, np.ndarray):
            decoded.append((str(p), arr))
        else:
            skipped += 1
            name, why = (p["image"], p["error"]) if isinstance(p, dict) else (p, arr)
            if len(paths) == 1:
                raise CxrError(f"{name}: {why}")
            warn(f"skipped {name}: {why}")
    if not decoded:
        raise CxrError(f"no readable image among the {len(paths)} given")

    out = check_out_path(out)
    protect = [Path(loaded.path)] + [Path(i) for i in images if Path(i).is_dir()]
    lock = claim_folder(
        out, "explain", OUT_ENTRIES, "a `cxr explain` folder", overwrite,
        f"{out} is not empty; choose a new --out or add --overwrite", protect=tuple(protect),
    )  # fmt: skip
    try:
        rows: list[dict[str, Any]] = []
        used: set[str] = set()
        user_masks = 0
        display = explainer.display
        for start in range(0, len(decoded), CHUNK):
            part = decoded[start : start + CHUNK]
            arrays = np.stack([a for _, a in part])
            probs, preds = predict_arrays(loaded, arrays)
            top = probs.argmax(axis=1)
            if target is not None:
                idx = [classes.index(target)] * len(part)
            else:
                idx = [int(t) if multilabel else int(k) for t, k in zip(top, preds, strict=True)]
            cams = explainer.cams(arrays, idx)
            for j, (path, _arr) in enumerate(part):
                cam, k, p = cams[j], idx[j], probs[j]
                predicted = classes[int(top[j])] if multilabel else classes[int(preds[j])]
                found = find_user_mask(masks_dir, path) if masks_dir is not None else None
                if found is not None:
                    mask, source = user_mask(found, size, resize), f"user: {found}"
                    outline = user_mask(found, display, resize)
                    user_masks += 1
                else:
                    mask, source = seg.mask_for(path, size, resize), "segmenter"
                    outline = seg.mask_for(path, display, resize)
                name = unique_name(path, used)
                gray = _decode(path, display, resize)
                heat = explainer.describe(
                    cam, mask, gray if isinstance(gray, np.ndarray) else None, outline, k
                )
                if heat["png"] is not None:
                    (out / f"{name}.png").write_bytes(heat["png"])
                row = {
                    "image": path,
                    "folder": Path(path).parent.name,
                    "class": classes[k],
                    "probability": round(float(p[k]), 6),
                    "predicted": predicted,
                    "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p, strict=True)},
                    "method": method_key,
                    "layer": layer_name,
                    "lung_share": heat["lung_share"],
                    "lung_area": heat["lung_area"],
                    "mask": source,
                    "overlay": f"{name}.png",
                    "heatmap_size": list(cam.shape),
                }
                rows.append(row)
                write_json(out / f"{name}.json", row)
        by_class = summarise(rows, "class", min_share, n_boot)
        by_folder = summarise(rows, "folder", min_share, n_boot)
        warnings = warnings_for(by_class, "class", min_share) + warnings_for(by_folder, "folder", min_share)
        summary = {
            "run": str(loaded.path),
            "method": method_key,
            "layer": layer_name,
            "target": target or "predicted class",
            "images": len(rows),
            "skipped": skipped,
            "user_masks": user_masks,
            "segmenter": {
                "dice_heldout": seg.card.get("dice_heldout", {}).get("mean"),
                "input_size": seg.size,
                "weights": str(segmenter)
                if segmenter
                else "shipped (cxrlab/explain/assets/lungs.safetensors)",
            },
            "min_share": min_share,
            "by_class": by_class,
            "by_folder": by_folder,
            "warnings": warnings,
        }
        write_json(out / "summary.json", summary)
        fields = ["image", "folder", "class", "probability", "predicted", "lung_share", "lung_area", "mask",
                  "overlay"]  # fmt: skip
        write_csv(out / "explain.csv", [{f: r[f] for f in fields} for r in rows], fields)
        return summary
    finally:
        lock.release()
