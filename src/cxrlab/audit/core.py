"""The data audit: counts, unreadable files, duplicates, patient overlap, acquisition properties,
shortcut baselines, and plain-sentence warnings.

:func:`audit_dataset` audits a dataset folder (what `cxr audit` runs); :func:`quick_audit` audits
the data a training run has already decoded (what `cxr train` runs, in seconds).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.audit.baselines import image_baseline, make_folds, metadata_baseline
from cxrlab.audit.duplicates import NEAR_DISTANCE, THUMBNAIL, find_duplicates, perceptual_hashes, thumbnails
from cxrlab.audit.patients import patient_ids, patient_overlap
from cxrlab.audit.properties import per_class_summary, read_properties
from cxrlab.audit.subgroups import subgroup_mix
from cxrlab.data.images import is_image_file
from cxrlab.data.index import SPLITS, DatasetIndex, small_val_warning
from cxrlab.data.splits import array_sha256, file_sha256
from cxrlab.runs import atomic_write

#: Metadata-only balanced accuracy this far above chance (1/k), with p < 0.01, triggers a warning.
SHORTCUT_MARGIN = 0.10
#: Image-statistics balanced accuracy from which the task is called "nearly trivial".
TRIVIAL_IMAGE_BASELINE = 0.90


@dataclass
class _Items:
    """The readable images being audited, in one flat order."""

    paths: list[str]
    splits: list[str]
    labels: np.ndarray
    groups: list[str]


def audit_dataset(
    path: str | Path,
    classes: list[str] | None = None,
    label_map: dict[str, str] | None = None,
    group_pattern: str | None = r"(person\d+)[_-]",
    patient_csv: str | Path | None = None,
    file_column: str = "filename",
    patient_column: str = "patientid",
    seed: int = 0,
    max_distance: int = NEAR_DISTANCE,
    cache_dir: str | None = None,
    labels: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Audit a dataset folder or ``.npz`` with the splits training would use (same seed and fractions);
    ``labels``: a :class:`~cxrlab.config.LabelsConfig` when DATA is the image folder of a label file;
    ``progress``: progress bars over reading and hashing the files (drawn on a terminal only)."""
    from cxrlab.config import DataConfig
    from cxrlab.data.cache import ImageCache
    from cxrlab.data.prepare import index_dataset
    from cxrlab.runtime import progress as progress_bar

    start = time.perf_counter()
    # the index `cxr train` would make of these settings: the same seed, fractions and task
    data_cfg = DataConfig(
        path=str(path),
        classes=classes,
        label_map=label_map or {},
        group_pattern=group_pattern,
        patient_csv=str(patient_csv) if patient_csv else None,
        patient_column=patient_column,
        file_column=file_column,
        **({"labels": labels} if labels is not None else {}),
    )
    index = index_dataset(data_cfg, seed)
    unreadable: dict[str, str] = {}
    if index.npz is not None:
        samples = index.samples
        arrays = [_npz_array(index, s.path) for s in samples]
        props: list[dict[str, Any]] | None = None
        hashes: list[str | None] = [array_sha256(a) for a in arrays]
        thumbs = thumbnails(arrays)
    else:
        paths = [s.path for s in index.samples]
        header, unreadable = read_properties(paths)
        unreadable.update(index.skipped)  # files the index already refused (e.g. names not valid UTF-8)
        bar = progress_bar(desc="reading images", total=len(paths), quiet=not progress)
        try:
            decoded, failures = ImageCache(cache_dir).load_many(paths, THUMBNAIL, progress=bar.update)
        finally:
            bar.close()
        unreadable.update({p: r for p, r in failures.items() if p not in unreadable})
        keep = [i for i, p in enumerate(paths) if p not in unreadable]
        samples = [index.samples[i] for i in keep]
        props = [header[i] for i in keep]  # type: ignore[misc]
        hashes = [file_sha256(paths[i]) for i in progress_bar(keep, "hashing files", quiet=not progress)]
        # filled row by row, each decoded thumbnail let go once copied: one copy at a time (at 100k images
        # a list plus np.stack held two, 2 x 400 MB)
        thumbs = np.empty((len(keep), THUMBNAIL, THUMBNAIL), np.uint8)
        for row, i in enumerate(keep):
            thumbs[row], decoded[i] = decoded[i], None
        del decoded
    items = _Items(
        [s.path for s in samples],
        [s.split for s in samples],
        np.array([s.label for s in samples], dtype=np.int64),
        [s.group for s in samples],
    )
    source = _patient_source(group_pattern, patient_csv, patient_column, index)
    if index.task == "multilabel":
        result = _audit_multilabel(index, samples, items, props, hashes, thumbs, unreadable, source, seed,
                                   max_distance)  # fmt: skip
    else:
        result = _audit(index, items, props, hashes, thumbs, unreadable, source, seed, max_distance)
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


QUICK_AUDIT_VERSION = "3"  # bump when _quick's output changes, so cached results are not reused


def quick_audit(data: Any, cache_dir: str | None = None) -> dict[str, Any]:
    """The audit of a training run's :class:`~cxrlab.data.prepare.PreparedData`: file headers and the
    already-decoded images only. Never fails a training run: a failure becomes a warning.

    The result depends on the data alone (files, splits, labels, groups), so it is kept in the image
    cache (``cache_dir``, see :class:`~cxrlab.data.cache.ImageCache`) under a key of exactly those, and
    a second run on the same data and splits reads it back instead of recomputing (``cached: true``)."""
    start = time.perf_counter()
    entry = _quick_cache_entry(data, cache_dir)
    if entry is not None and entry.is_file():
        try:
            result = json.loads(entry.read_text(encoding="utf-8"))
            result["cached"] = True
            result["seconds"] = round(time.perf_counter() - start, 3)
            return result
        except (OSError, ValueError):
            pass  # a damaged entry is recomputed and rewritten
    try:
        result = _quick(data)
    except Exception as exc:  # noqa: BLE001 - the audit must not cost the user a finished training run
        return {
            "warnings": [f"the data audit could not run ({exc.__class__.__name__}: {exc}); run `cxr audit`"],
            "error": f"{exc.__class__.__name__}: {exc}",
        }
    result["seconds"] = round(time.perf_counter() - start, 3)
    if entry is not None:
        with contextlib.suppress(OSError):  # a read-only cache only costs the next run the recomputation
            atomic_write(entry, json.dumps(result, default=_json_default))
    return result


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _quick_cache_entry(data: Any, cache_dir: str | None) -> Path | None:
    """Where the quick audit of exactly this data (file identities, splits, labels, groups) is cached;
    None when the cache is unusable or the data has no file identities."""
    from cxrlab.data.cache import ImageCache, digest

    if not data.keys or not data.paths:
        return None
    cache = ImageCache(cache_dir)
    if not cache.enabled:
        return None
    by_path = {s.path: s for s in data.index.samples}
    parts = [f"quick-audit-v{QUICK_AUDIT_VERSION}", str(data.image_size), *data.classes]
    for split in SPLITS:
        if split not in data.paths:
            continue
        for path, key, label in zip(data.paths[split], data.keys[split], data.labels[split], strict=True):
            sample = by_path[path]
            parts.append(f"{split}|{key}|{int(label)}|{sample.group}|{sample.synthetic}|{path}")
    parts += [f"skipped|{p}|{why}" for p, why in sorted(data.index.skipped)]
    source = Path(str(data.index.source))
    if source.is_file():  # .npz datasets and codes files: keys are paths inside them, add the file's identity
        st = source.stat()
        parts.append(f"source|{source.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    return cache.root / "audit" / f"{digest(parts)}.json"


def _quick(data: Any) -> dict[str, Any]:
    index: DatasetIndex = data.index
    order = [split for split in SPLITS if split in data.paths]
    by_path = {s.path: s for s in index.samples}
    paths = [p for split in order for p in data.paths[split]]
    labels = np.concatenate([data.labels[split] for split in order]) if order else np.zeros(0, np.int64)
    # row views, not a concatenated copy: the splits may be memory-mapped stores larger than RAM
    arrays = [row for split in order for row in data.images[split]] if data.images else None
    # Synthetic (--extra-train) images are not part of the data being audited.
    real = [i for i, p in enumerate(paths) if not by_path[p].synthetic]
    paths, labels = [paths[i] for i in real], labels[real]
    arrays = [arrays[i] for i in real] if arrays is not None else None
    samples = [by_path[p] for p in paths]
    items = _Items(paths, [s.split for s in samples], labels, [s.group for s in samples])
    on_disk = index.npz is None and all(os.path.isfile(p) for p in paths)
    props = None
    if on_disk:
        header, unreadable_headers = read_properties(paths)
        props = header if not unreadable_headers else None
    thumbs = thumbnails(arrays) if arrays is not None else None
    if on_disk:
        hashes: list[str | None] = [file_sha256(p) for p in paths]
    elif arrays is not None:
        hashes = [array_sha256(a) for a in arrays]
    else:
        hashes = [None] * len(paths)
    unreadable = dict(index.skipped)
    source = "the run's data.group_pattern (or data.patient_csv)"
    if index.task == "multilabel":
        source = _patient_source(None, None, "", index)
        result = _audit_multilabel(index, samples, items, props, hashes, thumbs, unreadable, source, 0,
                                   NEAR_DISTANCE)  # fmt: skip
    else:
        result = _audit(index, items, props, hashes, thumbs, unreadable, source, 0, NEAR_DISTANCE)
    result["synthetic_images_left_out"] = sum(s.synthetic for s in index.samples)
    return result


def _audit(
    index: DatasetIndex,
    items: _Items,
    props: list[dict[str, Any]] | None,
    hashes: list[str | None],
    thumbs: np.ndarray | None,
    unreadable: dict[str, str],
    patient_source: str,
    seed: int,
    max_distance: int,
) -> dict[str, Any]:
    classes = index.classes
    k = len(classes)
    counts = {
        split: {
            c: int(np.sum((items.labels == i) & (np.array(items.splits) == split)))
            for i, c in enumerate(classes)
        }
        for split in SPLITS
    }
    ids = patient_ids(items.groups)
    patients = patient_overlap(ids, items.splits, patient_source)
    # Cross-validation keeps a patient's images in one fold; images without an id are their own group.
    groups = np.array([pid if pid is not None else f"image:{i}" for i, pid in enumerate(ids)])
    splits = np.array(items.splits)
    folds = make_folds(items.labels, groups, seed)
    # the baselines' CIs resample patients where the data names them, as the model's metrics do
    ci_groups = groups.tolist() if any(pid is not None for pid in ids) else None
    if thumbs is not None and len(thumbs):
        phashes = perceptual_hashes(thumbs)
        duplicates = find_duplicates(
            items.paths, items.splits, items.labels.tolist(), classes, hashes, phashes, max_distance
        )
        image = image_baseline(thumbs, items.labels, folds, splits, k, seed, ci_groups)
    else:
        duplicates = find_duplicates(
            items.paths,
            items.splits,
            items.labels.tolist(),
            classes,
            hashes,
            np.zeros((len(hashes), 256), bool),
            -1,
        )
        duplicates["method"]["near"] = "not checked (no decoded images)"
        image = {"skipped": "no decoded images"}
    if props is not None and props:
        metadata = metadata_baseline(props, items.labels, folds, splits, k, seed, ci_groups)
        properties = per_class_summary(props, items.labels, classes)
    else:
        reason = (
            "arrays in a .npz file carry no acquisition metadata"
            if index.npz is not None
            else "no file headers"
        )
        metadata, properties = {"skipped": reason}, {}
    result: dict[str, Any] = {
        "source": index.source,
        "layout": index.layout,
        "classes": classes,
        "split_origin": index.split_origin,
        "counts": counts,
        "unreadable": [{"path": p, "reason": r} for p, r in sorted(unreadable.items())],
        "non_images": [{"path": p, "reason": _non_image_reason(p)} for p in index.ignored_paths]
        if hasattr(index, "ignored_paths")
        else [],
        "duplicates": duplicates,
        "patients": patients,
        "properties": properties,
        "metadata_baseline": metadata,
        "image_baseline": image,
        "subgroups": subgroup_mix(index, items.paths, items.splits),
    }
    result["warnings"] = make_warnings(result) + result["subgroups"]["warnings"]
    return result


def _audit_multilabel(
    index: DatasetIndex,
    samples: list[Any],
    items: _Items,
    props: list[dict[str, Any]] | None,
    hashes: list[str | None],
    thumbs: np.ndarray | None,
    unreadable: dict[str, str],
    patient_source: str,
    seed: int,
    max_distance: int,
) -> dict[str, Any]:
    """A multi-label task: duplicates and patients as for classes, the metadata-only baseline per finding
    (:mod:`cxrlab.audit.multilabel`); the label file's notes (missing images, patients in two splits of its
    split column) lead the warnings."""
    from cxrlab.audit.multilabel import (
        combination_labels,
        finding_counts,
        findings_baseline,
        findings_warnings,
    )

    combos, combo_names = combination_labels(samples, index.findings)
    ids = patient_ids(items.groups)
    patients = patient_overlap(ids, items.splits, patient_source)
    groups = np.array([pid if pid is not None else f"image:{i}" for i, pid in enumerate(ids)])
    if thumbs is not None and len(thumbs):
        duplicates = find_duplicates(items.paths, items.splits, combos, combo_names, hashes,
                                     perceptual_hashes(thumbs), max_distance)  # fmt: skip
    else:
        duplicates = find_duplicates(items.paths, items.splits, combos, combo_names, hashes,
                                     np.zeros((len(hashes), 256), bool), -1)  # fmt: skip
        duplicates["method"]["near"] = "not checked (no decoded images)"
    baseline = findings_baseline(index, samples, props, groups, seed)
    result: dict[str, Any] = {
        "source": index.source,
        "layout": index.layout,
        "task": "multilabel",
        "classes": index.findings,
        "findings": index.findings,
        "split_origin": index.split_origin,
        "counts": finding_counts(samples, index.findings),
        "images": {split: sum(s.split == split for s in samples) for split in SPLITS},
        "unreadable": [{"path": p, "reason": r} for p, r in sorted(unreadable.items())],
        "non_images": [],
        "duplicates": duplicates,
        "patients": patients,
        "properties": {},
        "metadata_baseline": {"skipped": "multi-label: see findings_baseline (one per finding)"},
        "image_baseline": {"skipped": "multi-label: not run"},
        "findings_baseline": baseline,
        "subgroups": subgroup_mix(index, items.paths, items.splits),
    }
    notes = list(getattr(index, "notes", []))
    if getattr(index, "missing", 0):
        notes.insert(
            0, f"{index.missing:,} label-file row(s) have no image under the data folder and were left out"
        )
    result["warnings"] = (
        notes
        + findings_warnings(baseline)
        + [w for w in make_warnings(result) if not w.startswith("The given validation split is tiny")]
        + result["subgroups"]["warnings"]
    )
    return result


def make_warnings(result: dict[str, Any]) -> list[str]:
    """Plain sentences about what threatens the validity of a model trained and tested on this data."""
    out: list[str] = []
    meta = result["metadata_baseline"]
    if "accuracy" in meta:
        margin = meta["balanced_accuracy"] - meta["chance_balanced"]
        if margin >= SHORTCUT_MARGIN and meta["p_value"] < 0.01:
            top = [s for s in meta.get("signal", []) if s["balanced_accuracy"] is not None][:2]
            names = ", ".join(
                f"{s['property'].replace('_', ' ')} ({s['balanced_accuracy']:.2f})" for s in top
            )
            out.append(
                "Labels can be predicted from acquisition properties alone, without any pixel: a "
                f"metadata-only classifier reaches accuracy {meta['accuracy']:.2f} "
                f"(balanced {meta['balanced_accuracy']:.2f}) against chance {meta['chance']:.2f} "
                f"(balanced {meta['chance_balanced']:.2f})"
                + (f"; strongest single properties (balanced accuracy): {names}" if names else "")
                + ". A CNN may exploit the same source differences through their traces in the pixels."
            )
    image = result["image_baseline"]
    if image.get("balanced_accuracy", 0) >= TRIVIAL_IMAGE_BASELINE:
        out.append(
            "A linear model on 8x8 thumbnails and intensity histograms already reaches balanced "
            f"accuracy {image['balanced_accuracy']:.2f} (chance {image['chance_balanced']:.2f}): the "
            "classes differ in coarse brightness and layout, so a high CNN accuracy says little about "
            "lung findings."
        )
    dup = result["duplicates"]
    s = dup["summary"]
    exact = s["test_images_exactly_duplicating_train_or_val"]
    if exact:
        out.append(
            f"{exact} image(s) of the test split are exact copies of training or validation images: "
            "test scores are inflated; remove them (pairs in duplicates.cross_split)."
        )
    near_only = s["test_images_duplicating_train_or_val"] - exact
    if near_only > 0:
        out.append(
            f"{near_only} image(s) of the test split are near duplicates of training or validation "
            f"images (perceptual hash within {dup['method']['max_distance']}/256 bits)."
        )
    if s["val_images_duplicating_train"]:
        out.append(
            f"{s['val_images_duplicating_train']} validation image(s) duplicate training images: "
            "early stopping and the operating threshold are tuned on leaked data."
        )
    within = s["exact_within_split"] + s["near_within_split"]
    if within:
        out.append(
            f"{within} duplicate pair(s) inside a split ({s['exact_within_split']} exact, "
            f"{s['near_within_split']} near): they add no information and make confidence "
            "intervals too narrow."
        )
    if s["pairs_with_different_labels"]:
        out.append(f"{s['pairs_with_different_labels']} duplicate pair(s) carry different labels.")
    p = result["patients"]
    if p["cross_split_count"]:
        pairs = ", ".join(f"{k}: {v}" for k, v in p["cross_split_by_pair"].items())
        examples = ", ".join(x["patient"] for x in p["cross_split"][:3])
        out.append(
            f"{p['cross_split_count']} patient(s) have images in more than one split ({pairs}; "
            f"e.g. {examples}): the model is tested on patients it was trained on."
        )
    total = p["images_with_id"] + p["images_without_id"]
    if total and p["images_without_id"]:
        out.append(
            f"{p['images_without_id']} of {total} images ({p['images_without_id'] / total:.0%}) have no "
            f"patient id from {p['source']}, so their patient overlap between splits cannot be checked; "
            "give a file-name pattern or a patient CSV (docs/trust.md)."
        )
    small_val = small_val_warning(result["counts"], result.get("split_origin", {}))
    if small_val:
        out.append(small_val)
    if result["unreadable"]:
        out.append(
            f"{len(result['unreadable'])} unreadable file(s) skipped (listed with reasons under "
            "'unreadable')."
        )
    return out


def _npz_array(index: DatasetIndex, path: str) -> np.ndarray:
    from cxrlab.data.prepare import _npz_gray

    _, split, i = path.split(":")
    return _npz_gray((index.npz or {})[f"{split}_images"][int(i)])


def _non_image_reason(path: str) -> str:
    if is_image_file(path):
        return "not a regular file (broken symlink, symlink loop or special file)"
    return "not an image file name (ignored)"


def _patient_source(pattern: str | None, csv: str | Path | None, column: str, index: Any = None) -> str:
    table = getattr(index, "table", None)
    if table is not None and table.roles.get("patient"):
        return f"column {table.roles['patient']!r} of {table.file}"
    if csv:
        return f"column {column!r} of {csv}"
    return f"file-name pattern '{pattern}'" if pattern else "no patient ids (no pattern)"
