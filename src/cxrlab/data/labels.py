"""Label files: a folder of images plus a CSV/TSV (optionally gzipped) with one row per image.

This is how the large public chest X-ray sets are released (NIH ChestX-ray14, CheXpert, MIMIC-CXR-JPG,
the ieee8023 COVID collection). As in torchxrayvision's dataset classes, the index keeps the label file's
metadata table with it (:class:`LabelTable`; ``Sample.row`` points into it) so that the audit can ask about
view, age, sex or any other column.

Reading, in order: the file (gzip by its magic bytes, CSV or TSV by its header) → the columns checked →
``where`` filters (all must hold) → does the image exist (one ``os.scandir`` per folder, cached, never one
``stat`` per row) → labels → patient groups → splits. Rows whose image is missing are counted and reported
in one line. Two tasks come out:

* one ``label_column`` → single-label: ``Sample.label`` indexes ``DatasetIndex.classes`` as for folders;
* a ``findings_column`` split on ``separator``, or several ``finding_columns`` coded 1 / 0 / -1 / blank →
  multi-label: ``DatasetIndex.task == "multilabel"``, ``DatasetIndex.findings`` names the columns of
  ``Sample.targets`` (float32, 1 / 0 / NaN where the uncertainty policy says *ignore*), ``Sample.label``
  is -1. ``No Finding`` is the absence of every finding (all zeros), never a finding of its own.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab.config import LabelsConfig
from cxrlab.errors import ConfigError, DataError

NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)  # fmt: skip
CHEXPERT_FINDINGS = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation",
    "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)  # fmt: skip

#: What each release's label file looks like. Keys are LabelsConfig fields (explicit settings win),
#: plus ``known_findings`` (order of a findings column), ``age``/``sex`` (metadata roles for the audit)
#: and ``split_lists`` (official (train, test) name lists looked for beside the label file).
PRESETS: dict[str, dict[str, Any]] = {
    "generic": {},
    "nih": {
        "image_column": "Image Index", "findings_column": "Finding Labels", "separator": "|",
        "patient_column": "Patient ID", "view_column": "View Position", "known_findings": NIH_FINDINGS,
        "age": "Patient Age", "sex": "Patient Gender", "split_lists": ("train_val_list.txt", "test_list.txt"),
    },
    "chexpert": {
        "image_column": "Path", "finding_columns": list(CHEXPERT_FINDINGS),
        "patient_pattern": r"(patient\d+)", "view_column": "AP/PA", "age": "Age", "sex": "Sex",
    },
    # mimic-cxr-2.0.0-chexpert.csv is per study: _mimic_table joins it with the metadata and split files
    "mimic": {
        "image_column": "path", "finding_columns": list(CHEXPERT_FINDINGS), "patient_column": "subject_id",
        "view_column": "ViewPosition", "split_column": "split",
    },
    "covid-ieee": {
        "image_column": "filename", "label_column": "finding", "patient_column": "patientid",
        "view_column": "view", "age": "age", "sex": "sex",
    },
}  # fmt: skip
MIMIC_METADATA = "mimic-cxr-2.0.0-metadata.csv"
MIMIC_SPLIT = "mimic-cxr-2.0.0-split.csv"
IMAGE_COLUMN_GUESSES = ("path", "Path", "filename", "file", "image", "Image Index", "image_path")
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "validate": "val",
                "dev": "val", "test": "test"}  # fmt: skip
#: CheXpert-style cell codes; anything else must parse as a number.
CODES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0, "": None}
SHOW = 3  # paths named in a missing-images line


@dataclass
class LabelTable:
    """The label file's kept rows (filters passed, image present), in file order: the metadata table.

    ``roles`` names the columns that play a part: image, patient, view, split, age, sex, label."""

    file: str
    columns: list[str]
    rows: list[list[str]]
    roles: dict[str, str] = field(default_factory=dict)
    filtered: int = 0  # rows left out by the where filters

    def column(self, name: str, samples: list[Any]) -> list[str]:
        """The column's value for each sample (``""`` for samples not from the file)."""
        at = self.columns.index(name)
        return [self.rows[s.row][at] if s.row >= 0 else "" for s in samples]


@dataclass
class LabelRows:
    """What a label file says about its kept rows, row ``i`` for each list; ``cxrlab.data.index`` turns
    it into a :class:`~cxrlab.data.index.DatasetIndex` (layout ``"labels"``)."""

    source: str  # the image folder (--data)
    table: LabelTable
    task: str = "single"  # "single" | "multilabel"
    classes: list[str] = field(default_factory=list)  # single-label classes; the findings when multi-label
    findings: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)  # class index; -1: no class (multi-label, or blank)
    targets: np.ndarray | None = None  # (rows, findings) float32: 1, 0, NaN (ignored)
    groups: list[str] = field(default_factory=list)
    splits: list[str | None] = field(default_factory=list)  # None: in no split, left out
    split_origin: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # one-line warnings
    missing: int = 0
    missing_paths: list[str] = field(default_factory=list)

    def usable(self) -> list[int]:
        """The rows that become samples: in a split, and with a class when single-label."""
        return [
            i
            for i, split in enumerate(self.splits)
            if split is not None and (self.task == "multilabel" or self.labels[i] >= 0)
        ]


# --------------------------------------------------------------------------- public entry points


def load_labels(root: str | Path, cfg: LabelsConfig, check_images: bool = True) -> LabelRows:
    """A label file's rows with existing images. Missing images are counted and reported in one
    warning line (notes too); :class:`DataError` when nothing is left."""
    read = read_labels(root, cfg, check_images)
    if not read.usable():
        raise DataError(_nothing_left(read, Path(root)))
    for line in ([missing_line(read)] if read.missing else []) + read.notes:
        print(f"warning: {line}", file=sys.stderr)
    return read


def missing_line(read: LabelRows) -> str:
    """``"12 of 1,000 rows of F.csv have no image under DATA (first: a.png, …); continuing with 988"``."""
    total = read.missing + len(read.paths)
    first = ", ".join(read.missing_paths[:SHOW]) + (", …" if read.missing > SHOW else "")
    return (
        f"{read.missing:,} of {total:,} rows of {read.table.file} have no image under {read.source} "
        f"(first: {first}); continuing with {len(read.paths):,}"
    )


def strata(targets: np.ndarray) -> np.ndarray:
    """A stratum per image for multi-label splits: 1 + the index (by rarity) of its rarest positive
    finding, 0 for none (NaN counts as not positive)."""
    positive = np.nan_to_num(targets) > 0
    rarity = np.argsort(np.argsort(positive.sum(0), kind="stable"), kind="stable")  # 0 = rarest
    rank = np.where(positive, rarity[None, :], targets.shape[1])
    return np.where(positive.any(1), rank.min(1) + 1, 0)


def require_single_label(index: Any, what: str = "training") -> None:
    """Stop with one line on a multi-label index where only single-label ``what`` exists yet."""
    if index.task == "multilabel":
        raise DataError(
            f"the label file gives a multi-label task ({len(index.findings)} findings: "
            f"{', '.join(index.findings[:4])}{', …' if len(index.findings) > 4 else ''}); multi-label "
            f"{what} is not available yet: for a single-label run name one column with --label-column COLUMN"
        )


# --------------------------------------------------------------------------- reading


def read_labels(root: str | Path, cfg: LabelsConfig, check_images: bool = True) -> LabelRows:
    """Everything :func:`load_labels` does except failing when no image is found (used by the benchmark;
    ``check_images=False`` takes every row as present, to time label parsing alone)."""
    root = Path(root).expanduser()
    if not cfg.file:
        raise ConfigError("no label file given: pass --labels FILE.csv (or set data.labels.file)")
    file = Path(cfg.file).expanduser()
    s = settings(cfg)
    header, rows = (_mimic_table if s["format"] == "mimic" else _table)(file)
    _check_columns(file, header, s)
    at = {c: i for i, c in reversed(list(enumerate(header)))}  # first of duplicated names
    filters = [(at[c], op, values) for c, op, values in (parse_where(w) for w in s["where"])]
    image, width = at[s["image_column"]], len(header)
    files = _Files(root)
    official = _official_splits(file, s) if s["official_split"] else {}
    kept: list[list[str]] = []
    paths: list[str] = []
    seen: set[str] = set()
    missing: list[str] = []
    n_missing = n_filtered = n_duplicate = n_blank = 0
    for row in rows:
        if len(row) < width:
            row += [""] * (width - len(row))
        if filters and not all((row[i] in values) == (op == "=") for i, op, values in filters):
            n_filtered += 1
            continue
        name = row[image].strip()
        if not name:
            n_blank += 1
            continue
        if name in seen:
            n_duplicate += 1
            continue
        seen.add(name)
        found = files.locate(name) if check_images else os.path.join(files.root, name)
        if found is None:
            n_missing += 1
            if len(missing) < SHOW:
                missing.append(name)
            continue
        kept.append(row)
        paths.append(found)
    if filters and not kept and not n_missing:
        raise DataError(
            f"--where {' AND '.join(s['where'])} leaves no rows of {file} ({n_filtered:,} filtered)"
        )
    read = LabelRows(str(root), LabelTable(str(file), header, kept, _roles(s), n_filtered), paths=paths)
    read.missing, read.missing_paths = n_missing, missing
    notes = read.notes
    if n_blank:
        notes.append(f"{n_blank:,} rows with an empty {s['image_column']!r} left out")
    if n_duplicate:
        notes.append(f"{n_duplicate:,} rows repeat an image already listed: the first row of each is used")
    if kept:
        _label_rows(read, s, at, official)
    return read


def settings(cfg: LabelsConfig) -> dict[str, Any]:
    """The preset's columns overridden by the explicit ones; one kind of label columns only."""
    preset = dict(PRESETS[cfg.format])
    given = {k: v for k, v in cfg.model_dump().items() if v is not None}
    kinds = [k for k in ("label_column", "findings_column", "finding_columns") if given.get(k)]
    if len(kinds) > 1:
        raise ConfigError(f"data.labels: give one of {', '.join(kinds)}, not several")
    if kinds:  # an explicit label column replaces the preset's kind of labels
        for k in ("label_column", "findings_column", "finding_columns", "separator"):
            preset.pop(k, None)
    return {**preset, **given}


def parse_where(text: str) -> tuple[str, str, set[str]]:
    """``"View Position=PA"`` → ``("View Position", "=", {"PA"})``; ``!=`` excludes; ``A|B`` is either."""
    match = re.fullmatch(r"\s*([^=!]+?)\s*(!?=)\s*(.*?)\s*", text)
    if not match:
        raise ConfigError(
            f"--where {text!r}: expected COLUMN=VALUE or COLUMN!=VALUE (either of several: COLUMN=A|B), "
            'e.g. --where "View Position=PA"'
        )
    column, op, values = match.groups()
    return column, op, {v.strip() for v in values.split("|")}


def _table(file: Path) -> tuple[list[str], Iterator[list[str]]]:
    """Header and row iterator of a CSV/TSV file, gzipped or not; one line for each way it can be unusable."""
    try:
        with open(file, "rb") as fh:
            head = fh.read(2)
    except FileNotFoundError:
        raise DataError(f"label file not found: {file}") from None
    except IsADirectoryError:
        raise DataError(f"--labels {file} is a folder; give the CSV/TSV label file") from None
    except OSError as exc:
        raise DataError(f"cannot read label file {file}: {exc.strerror or exc}") from None
    raw = gzip.open(file, "rb") if head == b"\x1f\x8b" else open(file, "rb")  # noqa: SIM115
    try:
        sample = raw.read(65536)
    except (OSError, EOFError) as exc:
        raw.close()
        raise DataError(f"{file} is a damaged gzip file ({exc}); download it again") from None
    if b"\x00" in sample or not _utf8_prefix(sample):
        raw.close()
        raise DataError(f"{file} is not a text label file (binary content); give a CSV or TSV file")
    body = sample.removeprefix(b"\xef\xbb\xbf")
    if not body.strip():
        raw.close()
        bom = " (nothing but a UTF-8 byte-order mark" + (" and blank space)" if body else ")")
        only = bom if body != sample else ""
        raise DataError(f"label file {file} is empty{only}; it needs a header row and one row per image")
    first = body.lstrip(b"\r\n").split(b"\n", 1)[0]
    delimiter = "\t" if first.count(b"\t") > first.count(b",") else ","
    raw.seek(0)
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
    reader = csv.reader(text, delimiter=delimiter)
    rows = _rows(reader, file, text)
    header = next((row for row in rows if row), None)  # blank lines before the header are skipped
    if header is None:
        raise DataError(f"label file {file} has no header row (only blank lines); it needs a header row and "
                        "one row per image")  # fmt: skip
    return [h.strip() for h in header], rows


def _rows(reader: Any, file: Path, text: io.TextIOWrapper) -> Iterator[list[str]]:
    """The rows of ``reader``; a row it cannot read is one line naming the file and the line it starts on."""
    start = 1
    try:
        for row in reader:
            yield row
            start = reader.line_num + 1
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise DataError(
                f"{file}: the row starting at line {start:,} has a field longer than "
                f'{csv.field_size_limit():,} characters, which no label file needs: usually a quote (") '
                "opened and never closed, so the lines after it read as one field; fix the quoting or "
                "re-export the file"
            ) from None
        raise DataError(f"{file}: cannot read line {start:,} ({exc}); fix or re-export the file") from None
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise DataError(
            f"{file}: cannot read near line {start:,} ({exc}); fix or re-export the file"
        ) from None
    finally:
        text.close()


def _utf8_prefix(data: bytes) -> bool:
    """True when ``data`` is UTF-8 apart from a character cut at its end."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(data) - 3
    return True


def _check_columns(file: Path, header: list[str], s: dict[str, Any]) -> None:
    if not s.get("image_column"):
        s["image_column"] = next((c for c in IMAGE_COLUMN_GUESSES if c in header), None)
        if s["image_column"] is None:
            shown = ", ".join(repr(c) if c != c.strip() or not c.isprintable() else c for c in header)
            raise DataError(
                f"{file}: name the column holding the image paths with --set data.labels.image_column=COLUMN "
                f"(its columns: {shown})"
            )
    if not any(s.get(k) for k in ("label_column", "findings_column", "finding_columns")):
        raise DataError(
            f"{file}: say which column holds the labels: --label-column COLUMN (single-label), or "
            f"data.labels.findings_column + separator, or data.labels.finding_columns (its columns: "
            f"{', '.join(header)})"
        )
    wanted = [s["image_column"], s.get("label_column"), s.get("findings_column"), s.get("patient_column"),
              s.get("split_column"), s.get("view_column"), *(s.get("finding_columns") or []),
              *(parse_where(w)[0] for w in s["where"])]  # fmt: skip
    absent = [c for c in dict.fromkeys(wanted) if c and c not in header]
    if absent:
        other = [f for f, p in PRESETS.items() if p.get("image_column") in header and f != s["format"]]
        hint = f"; is it --labels-format {other[0]}?" if other else ""
        raise DataError(
            f"{file} has no column {', '.join(map(repr, absent))} (its columns: {', '.join(header)}){hint}"
        )


def _mimic_table(file: Path) -> tuple[list[str], Iterator[list[str]]]:
    """MIMIC-CXR-JPG: the per-study CheXpert labels joined with the per-image metadata file (and the split
    file when present) found beside them, giving one row per image with a ``path`` and ``split``."""
    header, rows = _table(file)
    if "dicom_id" in header:  # already one row per image
        return header, rows
    meta_file = _beside(file, MIMIC_METADATA)
    if meta_file is None:
        raise DataError(
            f"{file} has labels per study; MIMIC-CXR-JPG images are listed in {MIMIC_METADATA}(.gz), "
            f"which is not beside it: put it in {file.parent}"
        )
    study = header.index("study_id") if "study_id" in header else None
    if study is None:
        raise DataError(f"{file} has no column 'study_id' (its columns: {', '.join(header)})")
    by_study = {row[study]: row for row in rows}
    split_file = _beside(file, MIMIC_SPLIT)
    splits: dict[str, str] = {}
    if split_file is not None:
        sh, srows = _table(split_file)
        if "dicom_id" in sh and "split" in sh:
            d, sp = sh.index("dicom_id"), sh.index("split")
            splits = {r[d]: r[sp] for r in srows if len(r) > max(d, sp)}
    mh, mrows = _table(meta_file)
    need = [c for c in ("dicom_id", "subject_id", "study_id") if c not in mh]
    if need:
        raise DataError(f"{meta_file} has no column {', '.join(need)} (its columns: {', '.join(mh)})")
    d, sub, st = mh.index("dicom_id"), mh.index("subject_id"), mh.index("study_id")
    labels = [c for c in header if c not in ("subject_id", "study_id")]
    out = []
    for m in mrows:
        lab = by_study.get(m[st])
        values = [lab[header.index(c)] for c in labels] if lab else [""] * len(labels)
        subject = m[sub]
        path = f"files/p{subject[:2]}/p{subject}/s{m[st]}/{m[d]}.jpg"
        out.append([*m, *values, path, splits.get(m[d], "")])
    return [*mh, *labels, "path", "split"], iter(out)


def _beside(file: Path, name: str) -> Path | None:
    return next((p for p in (file.parent / name, file.parent / f"{name}.gz") if p.is_file()), None)


def _official_splits(file: Path, s: dict[str, Any]) -> dict[str, str]:
    """``{image name: split}`` from the release's split lists beside the label file (NIH), else ``{}``."""
    lists = s.get("split_lists")
    if not lists or s.get("split_column"):
        return {}
    found = [file.parent / name for name in lists]
    if not all(p.is_file() for p in found):
        return {}
    out: dict[str, str] = {}
    for p, split in zip(found, ("train", "test"), strict=True):
        out.update(dict.fromkeys(p.read_text(encoding="utf-8", errors="replace").split(), split))
    return out


class _Files:
    """Which image paths exist under ``root``: one ``os.scandir`` per folder, cached."""

    def __init__(self, root: Path):
        self.root = str(root)
        self.name = root.name
        self._listings: dict[str, tuple[set[str], set[str]] | None] = {}
        self._by_name: dict[str, str] | None = None

    def _listing(self, folder: str) -> tuple[set[str], set[str]] | None:
        if folder not in self._listings:
            try:
                files, dirs = set(), set()
                with os.scandir(folder) as entries:
                    for e in entries:
                        (dirs if e.is_dir() else files).add(e.name)
                self._listings[folder] = (files, dirs)
            except OSError:
                self._listings[folder] = None
        return self._listings[folder]

    def _find(self, parts: list[str]) -> str | None:
        folder = self.root
        for part in parts[:-1]:
            listing = self._listing(folder)
            if listing is None or part not in listing[1]:
                return None
            folder = os.path.join(folder, part)
        listing = self._listing(folder)
        return os.path.join(folder, parts[-1]) if listing is not None and parts[-1] in listing[0] else None

    def locate(self, name: str) -> str | None:
        """The image's path: ``root/name``; ``name`` less a first folder named like ``root`` (CheXpert's
        ``CheXpert-v1.0-small/…`` under ``--data CheXpert-v1.0-small``); a bare file name anywhere in the
        first levels below ``root`` (NIH's ``images_001/images/``); else None."""
        name = name.replace("\\", "/")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if os.path.isabs(name) or ".." in parts:
            return name if os.path.isfile(os.path.join(self.root, name)) else None
        found = self._find(parts)
        if found is None and len(parts) > 1 and parts[0] == self.name:
            found = self._find(parts[1:])
        if found is None and len(parts) == 1:
            found = self._names().get(parts[0])
        return found

    def _names(self) -> dict[str, str]:
        if self._by_name is None:
            self._by_name = {}
            top = self._listing(self.root)
            if top is not None and top[1]:
                for dirpath, dirnames, filenames in os.walk(self.root):
                    if dirpath.count(os.sep) - self.root.count(os.sep) >= 2:
                        dirnames[:] = []
                    dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                    for f in filenames:
                        self._by_name.setdefault(f, os.path.join(dirpath, f))
        return self._by_name


# --------------------------------------------------------------------------- labels, groups, splits


def _label_rows(read: LabelRows, s: dict[str, Any], at: dict[str, int], official: dict[str, str]) -> None:
    rows = read.table.rows
    if s.get("label_column"):
        col = at[s["label_column"]]
        values = [r[col].strip() for r in rows]
        blank = sum(not v for v in values)
        if blank:
            read.notes.append(f"{blank:,} rows with an empty {s['label_column']!r} left out")
        read.classes = sorted({v for v in values if v})
        number = {c: i for i, c in enumerate(read.classes)}
        read.labels = [number.get(v, -1) for v in values]
    else:
        read.task = "multilabel"
        read.findings, read.targets = _targets(s, at, rows, read.table.file)
        read.classes = list(read.findings)
        read.labels = [-1] * len(rows)
    read.groups = _groups(s, at, rows, read.paths)
    read.splits = _splits(read, s, at, rows, official)
    _straddling(read)


def _targets(
    s: dict[str, Any], at: dict[str, int], rows: list[list[str]], file: str
) -> tuple[list[str], np.ndarray]:
    """Findings and the (rows, findings) float32 matrix: 1, 0, or NaN (ignored)."""
    nan = float("nan")
    uncertain = {"ignore": nan, "zeros": 0.0, "ones": 1.0}[s["uncertainty"]]
    blank = {"ignore": nan, "zeros": 0.0}[s["blank"]]
    none = s["no_finding"]
    if s.get("findings_column"):
        col, sep = at[s["findings_column"]], s.get("separator") or "|"
        cells = [{f.strip() for f in r[col].split(sep)} - {"", none} for r in rows]
        seen = set().union(*cells) if cells else set()
        known = list(s.get("known_findings") or [])
        findings = known + sorted(seen - set(known))
        column = {f: j for j, f in enumerate(findings)}
        matrix = np.zeros((len(rows), len(findings)), np.float32)
        for i, cell in enumerate(cells):
            for f in cell:
                matrix[i, column[f]] = 1.0
    else:
        findings = [c for c in s["finding_columns"] if c != none]
        matrix = np.empty((len(rows), len(findings)), np.float32)
        code = {**CODES, "-1": uncertain, "-1.0": uncertain, "": blank}
        for j, name in enumerate(findings):
            col = at[name]
            values = [r[col] for r in rows]
            lut = {
                v: code[v.strip()]
                if v.strip() in code
                else _number(v.strip(), name, file, values.index(v), uncertain)
                for v in set(values)
            }
            matrix[:, j] = [lut[v] for v in values]
    return _select(findings, matrix, s.get("findings"), file)


def _number(value: str, column: str, file: str, row: int, uncertain: float) -> float:
    try:
        number = float(value)
    except ValueError:
        number = None  # type: ignore[assignment]
    if number not in (1.0, 0.0, -1.0):
        raise DataError(
            f"{file}: column {column!r} holds {value!r} (data row {row + 1:,} of the kept rows); finding "
            "columns take 1, 0, -1 (uncertain) or blank"
        )
    return uncertain if number == -1.0 else float(number)


def _select(
    findings: list[str], matrix: np.ndarray, chosen: list[str] | None, file: str
) -> tuple[list[str], np.ndarray]:
    if not chosen:
        return findings, matrix
    lower = {f.lower(): j for j, f in enumerate(findings)}
    unknown = [c for c in chosen if c.lower() not in lower]
    if unknown:
        raise DataError(
            f"--findings {', '.join(map(repr, unknown))}: not findings of {file} "
            f"(it has: {', '.join(findings)})"
        )
    columns = list(dict.fromkeys(lower[c.lower()] for c in chosen))
    return [findings[j] for j in columns], matrix[:, columns]


def _groups(s: dict[str, Any], at: dict[str, int], rows: list[list[str]], paths: list[str]) -> list[str]:
    if s.get("patient_column"):
        col = at[s["patient_column"]]
        return [r[col].strip() or f"file:{p}" for r, p in zip(rows, paths, strict=True)]
    if s.get("patient_pattern"):
        try:
            pattern = re.compile(s["patient_pattern"])
        except re.error as exc:
            raise ConfigError(f"data.labels.patient_pattern {s['patient_pattern']!r}: {exc}") from None
        image = at[s["image_column"]]
        found = [pattern.search(r[image]) for r in rows]
        return [
            (m.group(1) if m.groups() else m.group(0)) if m else f"file:{p}"
            for m, p in zip(found, paths, strict=True)
        ]
    return [f"file:{p}" for p in paths]


def _splits(
    read: LabelRows,
    s: dict[str, Any],
    at: dict[str, int],
    rows: list[list[str]],
    official: dict[str, str],
) -> list[str | None]:
    """Each row's split (None: left out): the split column, else the official lists, else all train
    (the caller carves val and test by patient)."""
    if s.get("split_column"):
        col = at[s["split_column"]]
        raw = [r[col].strip().lower() for r in rows]
        if not any(raw):  # e.g. MIMIC without its split file: the caller carves splits by patient
            read.notes.append(f"split column {s['split_column']!r} is empty: splits are made by patient")
            return ["train"] * len(rows)
        unknown = sorted({v for v in raw if v and v not in SPLIT_VALUES})
        if unknown:
            raise DataError(
                f"split column {s['split_column']!r} holds {', '.join(map(repr, unknown[:5]))}; "
                "expected train, val (valid, validate) or test"
            )
        splits: list[str | None] = [SPLIT_VALUES[v] if v else None for v in raw]
        origin = f"label file column {s['split_column']!r}"
    elif official:
        image = at[s["image_column"]]
        splits = [official.get(os.path.basename(r[image].strip())) for r in rows]
        origin = "official list " + ", ".join(s["split_lists"])
    else:
        return ["train"] * len(rows)
    left = sum(v is None for v in splits)
    if left:
        read.notes.append(f"{left:,} rows in no split of the {origin} left out")
    for name in ("train", "val", "test"):
        if name in splits:
            read.split_origin[name] = origin
    return splits


def _straddling(read: LabelRows) -> None:
    """A note when splits from the file put one patient's images in two splits."""
    if not read.split_origin:
        return
    where: dict[str, set[str]] = {}
    for i in read.usable():
        if not read.groups[i].startswith("file:"):
            where.setdefault(read.groups[i], set()).add(read.splits[i])  # type: ignore[arg-type]
    both = sorted(g for g, splits in where.items() if len(splits) > 1)
    if both:
        read.notes.append(
            f"{len(both)} of {len(where)} patients have images in two splits of the "
            f"{next(iter(read.split_origin.values()))} "
            f"(e.g. {', '.join(both[:3])}): results mix patients seen in training; `cxr audit` lists them"
        )


def _roles(s: dict[str, Any]) -> dict[str, str]:
    names = {"image": "image_column", "label": "label_column", "findings": "findings_column",
             "patient": "patient_column", "split": "split_column", "view": "view_column", "age": "age",
             "sex": "sex"}  # fmt: skip
    return {role: s[key] for role, key in names.items() if s.get(key)}


def _nothing_left(read: LabelRows, root: Path) -> str:
    file = read.table.file
    if read.missing and not read.paths:
        column = read.table.roles.get("image", "image")
        return (
            f"none of the {read.missing:,} rows of {file} has its image under {root} (first: "
            f"{', '.join(read.missing_paths)}); --data must be the folder the {column!r} paths are "
            "relative to"
        )
    why = "; ".join(read.notes) or "it has a header but no rows"
    return f"no usable rows in {file}: {why}"
