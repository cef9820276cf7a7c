"""A run's ``splits.csv``: every image of the run with its split, class, patient group and a SHA-256 of its
content, written when the run is trained; and the check that re-scoring the run (`cxr evaluate RUN`) uses
exactly the test images recorded there, unchanged.

The content hash is of what the model read: the file's bytes for image files (DICOM included), the image
row's bytes for a MedMNIST ``.npz`` (its rows have no files: ``path`` is ``npz:SPLIT:ROW``), and the code
row's bytes for autoencoder codes. Runs written before the ``sha256`` column existed still load: their test
files are then checked by path only, and the result says so.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.data.index import DatasetIndex, Sample, code_rows
from cxrlab.errors import DataError

SPLITS_FILE = "splits.csv"
COLUMNS = ["split", "class", "path", "group", "synthetic", "sha256"]


def file_sha256(path: str | Path) -> str | None:
    """SHA-256 of a file's bytes (``None`` when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None


def array_sha256(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes (images that come as arrays, e.g. MedMNIST rows)."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


class ContentHasher:
    """The content hash of each sample of one index (see the module docstring for what is hashed)."""

    def __init__(self, index: DatasetIndex):
        self.index = index
        self._codes: tuple[dict[str, tuple[str, int]], dict[str, np.ndarray]] | None = None

    def __call__(self, sample: Sample) -> str | None:
        index = self.index
        if index.layout == "npz" and index.npz is not None:
            _, split, row = sample.path.split(":")
            return array_sha256(index.npz[f"{split}_images"][int(row)])
        if index.layout == "codes":
            where, arrays = self._code_rows()
            found = where.get(sample.path)
            return None if found is None else array_sha256(arrays[found[0]][found[1]])
        return file_sha256(sample.path)

    def _code_rows(self) -> tuple[dict[str, tuple[str, int]], dict[str, np.ndarray]]:
        if self._codes is None:
            self._codes = code_rows(self.index.source)
        return self._codes


def class_cell(index: DatasetIndex, sample: Sample) -> str:
    """splits.csv's class: the class name, or (multi-label) the positive findings joined by '|'."""
    if index.task == "multilabel":
        targets = sample.targets if sample.targets is not None else []
        return "|".join(f for f, v in zip(index.findings, targets, strict=True) if v > 0)
    return index.classes[sample.label]


def split_rows(index: DatasetIndex) -> list[dict[str, Any]]:
    """The rows of splits.csv for every sample of ``index``, each with its content hash."""
    hasher = ContentHasher(index)
    return [
        {
            "split": s.split,
            "class": class_cell(index, s),
            "path": s.path,
            "group": s.group,
            "synthetic": int(s.synthetic),
            "sha256": hasher(s),
        }
        for s in index.samples
    ]


@dataclass
class RecordedTest:
    """The outcome of checking a run's recorded test images against the data as it is now."""

    recorded: int  # test rows in splits.csv
    samples: list[Sample]  # the recorded test images found unchanged, in splits.csv's order
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, what changed)
    hashed: bool = True  # splits.csv has the sha256 column (runs before it: path checks only)

    def origin(self, allow_changed: bool) -> str:
        """How the test split was chosen, for metrics.json's ``data.split_origin.test`` and the report."""
        how = (
            "SHA-256 of each image verified"
            if self.hashed
            else "no content hashes recorded (run trained before cxrlab recorded them): checked by path only"
        )
        text = f"the run's test split as recorded in {SPLITS_FILE} ({self.recorded} images; {how})"
        if self.problems and allow_changed:
            text += (
                f"; --allow-changed: {len(self.samples)} of {self.recorded} scored, {len(self.problems)} "
                "missing or changed since training left out"
            )
        return text


def read_recorded_test(run: Path) -> tuple[list[dict[str, str]], bool] | None:
    """The test rows of ``run/splits.csv`` and whether it records content hashes; None without the file."""
    from cxrlab.runs import read_csv

    path = run / SPLITS_FILE
    if not path.is_file():
        return None
    rows = read_csv(path)
    if rows and "path" not in rows[0]:
        raise DataError(f"{path} has no 'path' column; it was not written by `cxr train`")
    hashed = bool(rows) and "sha256" in rows[0]
    return [r for r in rows if r.get("split") == "test"], hashed


def check_recorded_test(index: DatasetIndex, rows: list[dict[str, str]], hashed: bool) -> RecordedTest:
    """Match the recorded test rows to ``index`` (the data discovered now, any split) by path, and check
    that each image is still there, still has its class and (when recorded) its content hash."""
    by_path = {s.path: s for s in index.samples}
    hasher = ContentHasher(index)
    found: list[Sample] = []
    problems: list[tuple[str, str]] = []
    for row in rows:
        path = row["path"]
        sample = by_path.get(path)
        if sample is None:
            gone = not Path(path).exists()
            why = "missing (file not found)" if gone else "no longer found by the run's data settings"
            if path.startswith("npz:"):
                why = f"no row {path.split(':', 2)[2]} in the {path.split(':')[1]} arrays of {index.source}"
            problems.append((path, why))
            continue
        now = class_cell(index, sample)
        if now != row.get("class", now):
            problems.append((path, f"its label changed from {row['class']!r} to {now!r}"))
            continue
        if hashed and row.get("sha256"):
            digest = hasher(sample)
            if digest is None:
                problems.append((path, "cannot be read"))
                continue
            if digest != row["sha256"]:
                problems.append((path, f"changed since training (SHA-256 differs from {SPLITS_FILE}'s)"))
                continue
        sample.split = "test"
        sample.group = row.get("group") or sample.group
        found.append(sample)
    return RecordedTest(len(rows), found, problems, hashed)


def changed_error(run: Path, check: RecordedTest) -> DataError:
    """The one line for recorded test images that are missing or changed."""
    path, why = check.problems[0]
    more = len(check.problems) - 1
    others = f" (and {more} more of the {check.recorded} recorded test images)" if more else ""
    return DataError(
        f"recorded test image {path} of {run}: {why}{others}; the test split is the one in "
        f"{run / SPLITS_FILE}: restore the data, or score the images that remain with --allow-changed"
    )
