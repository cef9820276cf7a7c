"""Find the images, their classes and their splits.

Three layouts are understood:

* ``DATA/train/<class>/…`` with optional ``val/`` (also ``valid``/``validation``) and ``test/``;
* ``DATA/<class>/…`` with no splits — stratified, patient-grouped, seeded splits are made;
* a MedMNIST ``.npz`` file (``train_images``, ``train_labels``, optional ``val_*``/``test_*``).

Missing validation (and test) splits are carved out with a stratified, *group-aware* split:
images of one patient (from ``group_pattern`` on the file name) never straddle two splits.
``val_split`` chooses what happens to a *given* validation split: ``given`` uses it (the default),
``carve`` merges it into train and carves ``val_fraction`` from train instead, ``auto`` does so only
when the given split has fewer than :data:`MIN_VAL_PER_CLASS` images of some class.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrlab.data.images import is_image_file
from cxrlab.errors import DataError

if TYPE_CHECKING:
    from cxrlab.config import LabelsConfig

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
SPLITS = ("train", "val", "test")

#: ``data.val_split`` choices, see :func:`discover`.
VAL_SPLITS = ("given", "carve", "auto")
#: A given validation split with fewer images than this in some class is called too small to
#: early-stop or pick a threshold on: ``auto`` carves instead, ``given`` warns
#: (kermany-224's official val/ has 8 per class).
MIN_VAL_PER_CLASS = 30

#: Written by `cxr autoencoder encode` (cxrlab.generative): per split ``{split}_codes`` (float16
#: ``(N, C, H, W)``), ``{split}_labels``, ``{split}_paths`` and ``{split}_groups`` of the source
#: images, ``classes``, and ``meta`` (a JSON string: autoencoder, encode time, shape…).
CODES_FILE = "codes.npz"

#: Class names of MedMNIST files, by file stem (the .npz files carry only integer labels).
MEDMNIST_CLASSES = {
    "pneumoniamnist": ["normal", "pneumonia"],
    "chestmnist": None,  # multi-label: not supported
    "breastmnist": ["malignant", "normal_benign"],
}


@dataclass
class Sample:
    """One image: where it is, its class index, split and patient group."""

    path: str
    label: int
    split: str
    group: str
    synthetic: bool = False
    row: int = -1  # label files: the row of DatasetIndex.table (cxrlab.data.labels)
    targets: np.ndarray | None = None  # multi-label: 1 / 0 / NaN (ignored) per DatasetIndex.findings


@dataclass
class DatasetIndex:
    """Everything known about a dataset before any pixel is decoded."""

    source: str
    layout: str  # "splits" | "classes" | "npz"
    classes: list[str]
    samples: list[Sample]
    split_origin: dict[str, str] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored_files: int = 0
    ignored_paths: list[str] = field(default_factory=list)  # the non-image files (for `cxr audit`)
    hidden_dirs: list[str] = field(default_factory=list)  # dot-named folders, broken links (named in errors)
    npz: dict[str, np.ndarray] | None = None
    # label files (layout "labels", cxrlab.data.labels): the task, the findings of Sample.targets
    # (multi-label; Sample.label is -1 then), the metadata table, missing images and one-line notes
    task: str = "single"  # "single" | "multilabel"
    findings: list[str] = field(default_factory=list)
    table: Any = None  # cxrlab.data.labels.LabelTable
    missing: int = 0
    missing_paths: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # DICOM files: non-identifying header attributes per path (cxrlab.data.dicom.ATTRIBUTES + transfer_syntax)
    dicom: dict[str, dict[str, Any]] = field(default_factory=dict)

    def split(self, name: str) -> list[Sample]:
        """The samples of one split, in a stable order."""
        return [s for s in self.samples if s.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class."""
        out: dict[str, dict[str, int]] = {}
        for split in SPLITS:
            tally = Counter(s.label for s in self.samples if s.split == split)
            out[split] = {c: tally.get(i, 0) for i, c in enumerate(self.classes)}
        return out

    def synthetic_counts(self) -> dict[str, int]:
        """Synthetic (extra) training images per class."""
        tally = Counter(s.label for s in self.samples if s.synthetic)
        return {c: tally.get(i, 0) for i, c in enumerate(self.classes)}


def discover(
    path: str | Path,
    classes: list[str] | None = None,
    label_map: dict[str, str] | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    group_pattern: str | None = r"(person\d+)[_-]",
    seed: int = 0,
    max_per_class: int | None = None,
    require_test: bool = True,
    patient_csv: str | Path | None = None,
    patient_column: str = "patientid",
    file_column: str = "filename",
    labels: LabelsConfig | None = None,
    val_split: str = "given",
    dicom_patient_ids: str = "hashed",
) -> DatasetIndex:
    """Index a dataset folder or ``.npz`` file; raise :class:`DataError` with advice if unusable.

    With ``labels.file`` set, ``path`` is the image folder of that label file (cxrlab.data.labels);
    a multi-label index gets its val/test carved there and is returned as is.

    Patient groups come from ``group_pattern`` on file names or, when ``patient_csv`` is given,
    from its ``patient_column`` (rows matched on ``file_column``: a path relative to the data
    folder, or a file name). ``val_split`` (given | carve | auto) decides whether a given
    validation split is used or merged into train and carved anew (module docstring). DICOM images with no
    patient id from those sources are grouped by their header's Patient ID, as a salted hash unless
    ``dicom_patient_ids`` is ``raw`` (:func:`cxrlab.data.dicom.patient_group`)."""
    if val_split not in VAL_SPLITS:
        raise DataError(f"val_split {val_split!r}: choose given, carve or auto")
    root = Path(path).expanduser()
    if not is_utf8(str(root)):
        raise DataError(
            f"the data path {printable(str(root))} is not valid UTF-8; rename or move it (paths are written "
            "to UTF-8 reports)"
        )
    labelled = labels is not None and bool(labels.file)
    if not root.exists() and not labelled:
        raise DataError(f"data not found: {root} (give a folder of class subfolders, or a MedMNIST .npz)")
    label_map = label_map or {}
    try:
        pattern = re.compile(group_pattern) if group_pattern else None
    except re.error as exc:
        raise DataError(f"group_pattern {group_pattern!r} is not a valid regular expression: {exc}") from None

    codes = None if labelled else codes_file(root)
    if labelled:
        index = _index_labels(root, labels)  # type: ignore[arg-type]
        _dicom_headers(index, dicom_patient_ids)
        if index.task == "multilabel":  # carved here, by patient and rarest finding
            if not index.split("val"):
                _carve_multilabel(index, "train", "val", val_fraction, seed)
            if require_test and not index.split("test"):
                _carve_multilabel(index, "train", "test", test_fraction / (1 - val_fraction), seed + 1)
            return index
    elif codes is not None:
        index = _index_codes(codes)
    elif root.is_file():
        if root.suffix.lower() != ".npz":
            raise DataError(f"{root} is a file; --data takes a folder of class subfolders or a .npz file")
        index = _index_npz(root)
    else:
        index = _index_folder(root, pattern)
    if patient_csv and index.layout in ("splits", "classes"):
        _groups_from_csv(index, root, patient_csv, patient_column, file_column)
    if index.layout in ("splits", "classes"):
        _dicom_headers(index, dicom_patient_ids)

    if label_map:
        _apply_label_map(index, label_map)
    _select_classes(index, classes)
    _check_classes(index)
    merged = _merge_given_val(index, val_split)
    if max_per_class:
        _cap(index, max_per_class, seed)
    if not index.split("val"):
        _carve(index, "train", "val", val_fraction, seed)
        if merged:
            index.split_origin["val"] = f"{merged}; {index.split_origin['val']}"
    if require_test and not index.split("test"):
        _carve(index, "train", "test", test_fraction / (1 - val_fraction), seed + 1)
    return index


def add_extra_train(index: DatasetIndex, folder: str | Path, pattern: str | None = None) -> int:
    """Add images from ``folder/<class>/`` to the training split only, marked synthetic."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"--extra-train folder not found: {root}")
    added = 0
    for class_dir in _class_dirs(root):
        name = class_dir.name
        if name not in index.classes:
            raise DataError(
                f"--extra-train class {name!r} is not a class of the data ({', '.join(index.classes)})"
            )
        for file in _image_files(class_dir, index):
            index.samples.append(
                Sample(str(file), index.classes.index(name), "train", f"synthetic:{file}", True)
            )
            added += 1
    if added == 0:
        raise DataError(f"--extra-train {root} holds no images in class subfolders")
    return added


# --------------------------------------------------------------------------- layouts


def codes_file(path: str | Path | None) -> Path | None:
    """The codes file when ``path`` is a folder written by `cxr autoencoder encode` (or that file)."""
    if not path:
        return None
    root = Path(path).expanduser()
    if root.is_dir():
        return root / CODES_FILE if (root / CODES_FILE).is_file() else None
    if root.suffix.lower() == ".npz" and root.is_file():
        try:
            with np.load(root, allow_pickle=False) as npz:
                return root if "train_codes" in npz.files else None
        except Exception:  # noqa: BLE001 - unreadable: let the MedMNIST reader explain
            return None
    return None


def code_rows(source: str | Path) -> tuple[dict[str, tuple[str, int]], dict[str, np.ndarray]]:
    """A codes file's rows: where each image path sits (``split``, row) and each split's codes array."""
    with np.load(source, allow_pickle=False) as npz:
        where = {
            str(p): (split, i)
            for split in SPLITS
            if f"{split}_paths" in npz.files
            for i, p in enumerate(npz[f"{split}_paths"])
        }
        arrays = {split: npz[f"{split}_codes"] for split in SPLITS if f"{split}_codes" in npz.files}
    return where, arrays


def codes_meta(path: str | Path | None) -> dict | None:
    """The ``meta`` record of a codes file (shape, encode time, autoencoder…), or None for image data."""
    import json

    found = codes_file(path)
    if found is None:
        return None
    try:
        with np.load(found, allow_pickle=False) as npz:
            return json.loads(str(npz["meta"]))
    except Exception as exc:  # noqa: BLE001 - any damage means: encode again
        raise DataError(f"{found} is damaged ({exc}); write it again with `cxr autoencoder encode`") from None


def _index_codes(path: Path) -> DatasetIndex:
    """Autoencoder codes: samples keep their source image paths and patient groups (for paired tests)."""
    meta = codes_meta(path) or {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            classes = [str(c) for c in npz["classes"]]
            samples = [
                Sample(str(p), int(y), split, str(g))
                for split in SPLITS
                if f"{split}_labels" in npz.files
                for p, y, g in zip(
                    npz[f"{split}_paths"], npz[f"{split}_labels"], npz[f"{split}_groups"], strict=True
                )
            ]
    except Exception as exc:  # noqa: BLE001 - any damage means: encode again
        raise DataError(f"{path} is damaged ({exc}); write it again with `cxr autoencoder encode`") from None
    index = DatasetIndex(str(path), "codes", classes, samples)
    index.split_origin = {k: f"as encoded: {v}" for k, v in meta.get("split_origin", {}).items()}
    return index


def _index_npz(root: Path) -> DatasetIndex:
    """A MedMNIST-style file, its arrays checked and normalised by :mod:`cxrlab.data.npz`."""
    from cxrlab.data import npz as npz_check

    arrays = npz_check.read_arrays(root)
    if "train_images" not in arrays or "train_labels" not in arrays:
        raise DataError(
            f"{root} lacks the MedMNIST keys train_images/train_labels "
            f"(has: {', '.join(arrays) or 'nothing'})"
        )
    present = [split for split in SPLITS if f"{split}_images" in arrays or f"{split}_labels" in arrays]
    for split in present:
        have, lack = (f"{split}_images", f"{split}_labels")[:: 1 if f"{split}_images" in arrays else -1]
        if lack not in arrays:
            raise DataError(f"{root} has {have} but no {lack}; give both")
    n_total = sum(len(a) if (a := arrays[f"{split}_images"]).ndim else 0 for split in present)
    labels: dict[str, np.ndarray] = {}
    for split in present:
        images, key = arrays[f"{split}_images"], f"{split}_labels"
        images = npz_check.check_images(root, f"{split}_images", images)
        labels[split] = npz_check.check_labels(root, key, arrays[key], n_total)
        if len(labels[split]) != len(images):
            raise DataError(
                f"{root}: {split}_images has {len(images)} images but {key} has {len(labels[split])} "
                "labels; they must match"
            )
        arrays[key], arrays[f"{split}_images"] = labels[split], images
    names = npz_check.check_names(root, MEDMNIST_CLASSES.get(root.stem.lower().split("_")[0]), labels)
    samples = [
        Sample(f"npz:{split}:{i}", int(y), split, f"npz:{split}:{i}")
        for split in present
        for i, y in enumerate(labels[split])
    ]
    return DatasetIndex(str(root), "npz", names, samples, npz=arrays)


def _index_folder(root: Path, pattern: re.Pattern[str] | None) -> DatasetIndex:
    subdirs = _subdirs(root)
    split_dirs = {SPLIT_NAMES[d.name.lower()]: d for d in subdirs if d.name.lower() in SPLIT_NAMES}
    index = DatasetIndex(str(root), "splits" if "train" in split_dirs else "classes", [], [])
    if split_dirs and "train" not in split_dirs:
        raise DataError(f"{root} has {', '.join(sorted(split_dirs))}/ but no train/ folder")
    roots = split_dirs if "train" in split_dirs else {"train": root}
    names: list[str] = []
    per_split: dict[str, dict[str, Path]] = {}
    for split, folder in roots.items():
        per_split[split] = {d.name: d for d in _class_dirs(folder, index.hidden_dirs)}
        for name in per_split[split]:
            if not is_utf8(name):
                raise DataError(
                    f"class folder {printable(str(folder / name))} has a name that is not valid UTF-8; "
                    "rename it (class names are written to UTF-8 reports)"
                )
        names += [n for n in sorted(per_split[split]) if n not in names]
    if not names:
        raise DataError(
            f"{root} has no class subfolders (expected {root}/<class>/<image> or {root}/train/<class>/)"
            + hidden_note(index)
        )
    index.classes = names
    for split, class_dirs in per_split.items():
        for name, class_dir in class_dirs.items():
            files = _image_files(class_dir, index)
            if not files:
                raise DataError(
                    f"class folder {class_dir} holds no images; add images or leave it out with --classes"
                )
            for file in files:
                group = _group(file.name, pattern) or f"file:{file}"
                index.samples.append(Sample(str(file), names.index(name), split, group))
    return index


def _index_labels(root: Path, labels: LabelsConfig) -> DatasetIndex:
    """A label file's usable rows as samples (:mod:`cxrlab.data.labels` reads it and finds the images)."""
    from cxrlab.data.labels import load_labels

    read = load_labels(root, labels)
    index = DatasetIndex(read.source, "labels", read.classes, [], dict(read.split_origin), task=read.task,
                         findings=read.findings, table=read.table, missing=read.missing,
                         missing_paths=read.missing_paths, notes=read.notes)  # fmt: skip
    for i in read.usable():
        targets = read.targets[i] if read.targets is not None else None
        index.samples.append(Sample(read.paths[i], read.labels[i], read.splits[i], read.groups[i], row=i,
                                    targets=targets))  # type: ignore[arg-type]  # fmt: skip
    return index


def _subdirs(folder: Path, hidden: list[str] | None = None) -> list[Path]:
    """Sub-folders of ``folder``, sorted. Dot-named ones are left out, their names added to ``hidden``,
    as are symlinks that lead nowhere (``"name -> target"``), which are not folders yet look like one."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(f"cannot read folder {printable(str(folder))}: {exc.strerror or exc}") from None
    found = []
    for d in entries:
        if not d.is_dir():
            if hidden is not None and d.is_symlink():  # dangling, or a loop: is_dir() is False
                hidden.append(f"{d.name} -> {os.readlink(d)} (a broken symlink)")
            continue
        if d.name.startswith("."):
            if hidden is not None and d.name not in hidden:
                hidden.append(d.name)
            continue
        found.append(d)
    return found


def _class_dirs(folder: Path, hidden: list[str] | None = None) -> list[Path]:
    return _subdirs(folder, hidden)


def hidden_note(index: DatasetIndex) -> str:
    """``"; ignored hidden folders: .a, .b (…)"`` (and broken symlinks) when such folders were left
    out, else ``""``."""
    hidden = [printable(h) for h in index.hidden_dirs if h.startswith(".") and " -> " not in h]
    broken = [printable(h) for h in index.hidden_dirs if h not in hidden]
    note = ""
    if hidden:
        note += (
            f"; ignored hidden folders: {', '.join(hidden)} "
            "(names starting with '.' are never classes; rename one to use it)"
        )
    if broken:
        note += f"; ignored: {', '.join(broken)}"
    return note


def _image_files(class_dir: Path, index: DatasetIndex) -> list[Path]:
    """All image files below ``class_dir`` (recursive, symlink loops broken, hidden files skipped)."""
    found: list[Path] = []
    seen: set[str] = set()
    top = os.path.realpath(class_dir)
    errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(class_dir, onerror=errors.append, followlinks=True):
        real = os.path.realpath(dirpath)
        # A link back to the class folder or above it (e.g. loop -> ..) is a loop that would also pull
        # in the other classes' images under this class's label: never follow it.
        if real in seen or top.startswith(real.rstrip(os.sep) + os.sep):
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            file = Path(dirpath) / name
            if not is_utf8(str(file)):
                index.skipped.append((printable(str(file)), NOT_UTF8))
                continue
            if is_image_file(file) and file.is_file():
                found.append(file)
            else:
                index.ignored_files += 1
                index.ignored_paths.append(str(file))
    _unreadable_folders(class_dir, errors, index)
    return found


def _unreadable_folders(class_dir: Path, errors: list[OSError], index: DatasetIndex) -> None:
    """A class folder that cannot be listed is an error naming why; an unreadable sub-folder is skipped
    with its reason (``os.walk`` would pass over both in silence)."""
    for exc in errors:
        where = str(exc.filename) if exc.filename is not None else str(class_dir)
        why = exc.strerror or str(exc)
        if os.path.abspath(where) == os.path.abspath(class_dir):
            raise DataError(
                f"cannot read class folder {printable(where)}: {why} (check its permissions, or leave it out "
                "with --classes)"
            )
        index.skipped.append((printable(where), f"cannot read this folder: {why}"))


#: Why a file whose name is not valid UTF-8 is skipped (see :func:`is_utf8`).
NOT_UTF8 = "file name is not valid UTF-8 (shown with \\x escapes); rename it to use it"


def is_utf8(name: str) -> bool:
    """False for a name holding bytes that are not UTF-8 (Python carries them as lone surrogates).

    Such files are skipped with a named reason rather than used: every path cxrlab keeps ends up in
    UTF-8 files (splits.csv, predictions.csv, metrics.json, report.html), and an escaped stand-in there
    would not name the file on disk for other tools."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(path: str) -> str:
    """``path`` with bytes that are not UTF-8 written as ``\\xNN`` escapes: safe in CSV, JSON and HTML."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _groups_from_csv(index: DatasetIndex, root: Path, csv_path: str | Path, patient: str, file: str) -> None:
    """Replace the pattern-based groups by the CSV's patient ids (files not in the CSV: one group each)."""
    from cxrlab.data.patients import read_patient_csv

    mapping = read_patient_csv(csv_path, file, patient)
    for s in index.samples:
        rel = os.path.relpath(s.path, root).replace(os.sep, "/")
        s.group = mapping.get(rel) or mapping.get(os.path.basename(s.path)) or f"file:{s.path}"


def _dicom_headers(index: DatasetIndex, mode: str) -> None:
    """DICOM files: their header attributes into ``index.dicom`` (header only, no pixel decoded), and their
    Patient ID as the group of images that have no patient id from a CSV, label file or file-name pattern.
    An unreadable header is left to decoding, which skips the file with its reason."""
    from cxrlab.data.dicom import PATIENT_ID_MODES, DicomError, is_dicom, patient_group, read_header

    if mode not in PATIENT_ID_MODES:
        raise DataError(f"data.dicom_patient_ids {mode!r}: choose hashed or raw")
    for s in index.samples:
        if not is_dicom(s.path):
            continue
        try:
            head = read_header(s.path)
        except DicomError:
            continue
        index.dicom[s.path] = head.attributes
        if head.patient_id and s.group.startswith("file:"):
            s.group = patient_group(head.patient_id, mode)


def _group(name: str, pattern: re.Pattern[str] | None) -> str | None:
    if pattern is None:
        return None
    match = pattern.search(name)
    if not match:
        return None
    return match.group(1) if match.groups() else match.group(0)


# --------------------------------------------------------------------------- classes


def _apply_label_map(index: DatasetIndex, label_map: dict[str, str]) -> None:
    unknown = [k for k in label_map if k not in index.classes]
    if unknown:
        raise DataError(
            f"--label-map names {', '.join(map(repr, unknown))}, not classes of {index.source} "
            f"(it has: {', '.join(index.classes)})"
        )
    renamed = [label_map.get(c, c) for c in index.classes]
    merged = list(dict.fromkeys(renamed))
    for s in index.samples:
        s.label = merged.index(renamed[s.label])
    index.classes = merged


def _select_classes(index: DatasetIndex, classes: list[str] | None) -> None:
    if not classes:
        return
    lower = {c.lower(): c for c in index.classes}
    chosen = []
    for name in classes:
        actual = name if name in index.classes else lower.get(name.lower())
        if actual is None:
            raise DataError(
                f"class {name!r} not found in {index.source}; available: {', '.join(index.classes)}"
            )
        chosen.append(actual)
    if len(set(chosen)) != len(chosen):
        raise DataError(f"--classes lists a class twice: {', '.join(classes)}")
    old = index.classes
    index.samples = [s for s in index.samples if old[s.label] in chosen]
    for s in index.samples:
        s.label = chosen.index(old[s.label])
    index.classes = chosen


def _check_classes(index: DatasetIndex) -> None:
    counts = index.counts()
    if len(index.classes) < 2:
        raise DataError(
            f"{index.source} has only one class ({', '.join(index.classes)}); a classifier needs at least two"
            + hidden_note(index)
        )
    has_test = any(counts["test"].values())
    for name in index.classes:
        if counts["train"][name] == 0:
            where = [s for s in SPLITS if counts[s][name]]
            if not where:
                raise DataError(
                    f"class {name!r} of {index.source} has no images at all; "
                    "leave it out with --classes or add images"
                )
            raise DataError(
                f"class {name!r} has no training images (only in {', '.join(where)}); "
                "add training images or leave it out with --classes"
            )
        if has_test and counts["test"][name] == 0:
            raise DataError(
                f"class {name!r} is in train but not in test, so it cannot be evaluated; "
                "add test images or leave it out with --classes"
            )


def _cap(index: DatasetIndex, limit: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    kept: list[Sample] = []
    for split in SPLITS:
        for label in range(len(index.classes)):
            group = [s for s in index.samples if s.split == split and s.label == label]
            if len(group) > limit:
                group = [group[i] for i in sorted(rng.choice(len(group), limit, replace=False))]
            kept += group
    index.samples = kept


# --------------------------------------------------------------------------- splits


def _merge_given_val(index: DatasetIndex, mode: str) -> str | None:
    """``carve`` (or ``auto`` on a split below :data:`MIN_VAL_PER_CLASS` per class): move the given
    validation images into train, to be carved again with the rest; returns what was done, or None."""
    given = index.split("val")
    if not given or mode == "given":
        return None
    tally = Counter(s.label for s in given)
    sizes = ", ".join(f"{c} {tally.get(i, 0)}" for i, c in enumerate(index.classes))
    if mode == "auto" and min(tally.get(i, 0) for i in range(len(index.classes))) >= MIN_VAL_PER_CLASS:
        return None
    for s in given:
        s.split = "train"
    why = (
        "val_split carve"
        if mode == "carve"
        else f"val_split auto: fewer than {MIN_VAL_PER_CLASS} images of some class"
    )
    return f"the given validation split ({len(given)} images: {sizes}) merged into train ({why})"


def small_val_warning(counts: dict[str, dict[str, int]], split_origin: dict[str, str]) -> str | None:
    """A data warning when the validation split was given (not carved) and has fewer than
    :data:`MIN_VAL_PER_CLASS` images of some class; None otherwise."""
    val = counts.get("val", {})
    if "val" in split_origin or not val or not any(val.values()):
        return None
    if min(val.values()) >= MIN_VAL_PER_CLASS:
        return None
    sizes = ", ".join(f"{c} {n}" for c, n in val.items())
    return (
        f"The given validation split is tiny ({sum(val.values())} images: {sizes}; fewer than "
        f"{MIN_VAL_PER_CLASS} of some class): early stopping, the kept checkpoint and the operating "
        "threshold are chosen on it and are mostly noise. Carve a stratified, patient-grouped "
        "validation set from train instead: --val-split carve (config: data.val_split: carve)."
    )


def _carve(index: DatasetIndex, source: str, target: str, fraction: float, seed: int) -> None:
    """Move a stratified, patient-grouped ``fraction`` of ``source`` into ``target``."""
    pool = [s for s in index.samples if s.split == source and not s.synthetic]
    labels = np.array([s.label for s in pool])
    groups = np.array([s.group for s in pool])
    held = group_stratified_holdout(labels, groups, fraction, seed)
    for i in np.flatnonzero(held):
        pool[i].split = target
    left = Counter(s.label for s in index.samples if s.split == source)
    for i, name in enumerate(index.classes):
        if left.get(i, 0) == 0:
            raise DataError(f"class {name!r} has too few images to split into train/{target}; add images")
    index.split_origin[target] = (
        f"carved from {source}: {held.sum()} images ({fraction:.0%}), stratified by class, "
        f"grouped by patient, seed {seed}"
    )


def group_stratified_holdout(
    labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """Boolean mask of a held-out share: stratified by label, never splitting a group."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, round(1 / fraction))
    # StratifiedGroupKFold refuses when every class has fewer members than folds: hold out at random then
    if len(set(groups)) < n_splits or np.bincount(labels).max() < n_splits:
        mask = np.zeros(len(labels), dtype=bool)
        mask[
            np.random.default_rng(seed).permutation(len(labels))[: max(1, round(fraction * len(labels)))]
        ] = True
        return mask
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, held = next(iter(splitter.split(np.zeros(len(labels)), labels, groups)))
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return mask


def _carve_multilabel(index: DatasetIndex, source: str, target: str, fraction: float, seed: int) -> None:
    """:func:`_carve` for a multi-label index: stratified by each image's rarest positive finding."""
    from cxrlab.data.labels import strata

    pool = [s for s in index.samples if s.split == source]
    if not pool:
        raise DataError(f"no {source} images to split a {target} split from; add images or a split column")
    labels = strata(np.stack([s.targets for s in pool]))  # type: ignore[misc]
    held = group_stratified_holdout(labels, np.array([s.group for s in pool]), fraction, seed)
    for i in np.flatnonzero(held):
        pool[i].split = target
    if len(pool) == held.sum():
        raise DataError(f"too few {source} images to split into {source}/{target}; add images")
    index.split_origin[target] = (
        f"carved from {source}: {held.sum()} images ({fraction:.0%}), stratified by rarest finding, "
        f"grouped by patient, seed {seed}"
    )
