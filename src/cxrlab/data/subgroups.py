"""Subgroup attributes of a dataset's images: sex, age band, view, manufacturer or any named column, read
from the label file (the preset's roles: NIH ``Patient Gender`` / ``Patient Age`` / ``View Position``,
CheXpert ``Sex`` / ``Age`` / ``Frontal/Lateral`` / ``AP/PA``, MIMIC, covid-ieee ``sex`` / ``age`` / ``view``),
a ``--patient-csv`` or DICOM headers (PatientSex, PatientAge, ViewPosition, Manufacturer).

Ages parse from numbers and DICOM Age Strings (``"058Y"``, ``"045M"``, ``"010W"``, ``"003D"``) and
``"90+"`` into the bands of Seyyed-Kalantari et al. (0-19, 20-39, 40-59, 60-79, 80+). A blank or
unparsable cell is counted and named (:attr:`Attribute.blank`, :attr:`Attribute.unparsed`), never dropped
silently; a missing or single-valued column is one line. Used by the evaluation
(:mod:`cxrlab.evaluation.subgroups`) and the audit (subgroup mix per split).
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The bands of Seyyed-Kalantari et al. (years, lower bound inclusive).
AGE_BANDS = ((0, "0-19"), (20, "20-39"), (40, "40-59"), (60, "60-79"), (80, "80+"))
#: Values that mean "not recorded".
MISSING = {"", "nan", "none", "null", "na", "n/a", "unknown", "-", "?"}
SEX = {"m": "M", "male": "M", "f": "F", "female": "F", "o": "O", "other": "O"}
#: Role → column-name guesses for a patient CSV (case-insensitive).
GUESSES = {
    "sex": ("sex", "gender", "patient sex", "patient gender", "patientsex"),
    "age": ("age", "patient age", "patientage"),
    "view": ("view", "view position", "viewposition", "projection"),
}
#: The DICOM header's attributes by role.
DICOM_ROLES = {
    "sex": "PatientSex",
    "age": "PatientAge",
    "view": "ViewPosition",
    "manufacturer": "Manufacturer",
}
DEFAULT_MIN_N = 20


def parse_age(text: Any) -> float | None:
    """Age in years from a label cell or DICOM PatientAge: ``58``, ``"58.0"``, ``"058Y"``, ``"045M"``
    (months), ``"010W"``, ``"003D"``, ``"90+"``; None for blank or anything else (``"abc"``, < 0, > 130)."""
    if text is None or (isinstance(text, float) and not math.isfinite(text)):
        return None
    s = str(text).strip().upper()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([YMWD]?)\s*(\+?)", s)
    if not match:
        return None
    value = float(match.group(1)) / {"": 1, "Y": 1, "M": 12, "W": 52.1775, "D": 365.25}[match.group(2)]
    return value if 0 <= value <= 130 else None


def age_band(years: float) -> str:
    """The band of an age in years (:data:`AGE_BANDS`)."""
    return [name for lo, name in AGE_BANDS if years >= lo][-1]


def normalise(role: str, text: Any) -> str | None:
    """A cell as a subgroup level: sex as M/F/O, age as its band, other text stripped; None when missing
    (blank, "unknown", …) or unparsed (an age that is not one)."""
    s = "" if text is None else str(text).strip()
    if s.lower() in MISSING:
        return None
    if role == "age":
        years = parse_age(s)
        return None if years is None else age_band(years)
    if role == "sex":
        return SEX.get(s.lower(), s)
    return s


@dataclass
class Attribute:
    """One grouping: its name (``sex``, ``age band``, ``view``, a column), where it came from, each image's
    level (None: missing or unparsed) and the raw text of the unparsed cells."""

    name: str
    source: str
    values: list[str | None]
    blank: int = 0
    unparsed: Counter = field(default_factory=Counter)

    def levels(self) -> dict[str, int]:
        return dict(sorted(Counter(v for v in self.values if v is not None).items()))


@dataclass
class SubgroupData:
    """The attributes of one split's images (in ``paths`` order), what could not be used, and ``min_n``."""

    attributes: list[Attribute]
    notes: list[str]
    min_n: int = DEFAULT_MIN_N
    missing: list[str] = field(default_factory=list)  # named attributes found nowhere


def _role(name: str) -> str:
    low = name.strip().lower()
    for role, guesses in GUESSES.items():
        if low == role or low in guesses or low == f"{role} band":
            return role
    if low in ("manufacturer",):
        return "manufacturer"
    for role, keyword in DICOM_ROLES.items():
        if low == keyword.lower():
            return role
    return "other"


def _display(role: str, column: str) -> str:
    return {"sex": "sex", "age": "age band", "view": "view", "manufacturer": "manufacturer"}.get(role, column)


def collect(
    index: Any,
    paths: list[str],
    names: list[str] | None = None,
    min_n: int = DEFAULT_MIN_N,
    patient_csv: str | None = None,
    file_column: str = "filename",
) -> SubgroupData:
    """Each image's subgroup levels. ``names`` (``eval.subgroups``): roles (sex, age, view, manufacturer)
    or column names of the label file, the patient CSV or DICOM keywords; None: the preset's defaults (the
    label file's sex, age and view columns, CheXpert's Frontal/Lateral too; DICOM: sex, age, view,
    manufacturer; a patient CSV: columns named like sex/gender, age, view). Never raises on bad input:
    a missing or single-valued column and unparsed cells become one note each."""
    by_path = {s.path: s for s in index.samples}
    samples = [by_path.get(p) for p in paths]
    table = getattr(index, "table", None)
    csv_rows = _csv_rows(patient_csv, index.source, paths, file_column) if patient_csv else None
    dicom = [p for p in paths if p in (getattr(index, "dicom", None) or {})]
    notes: list[str] = []
    wanted: list[tuple[str, str]] = []  # (role, column or keyword)
    if names is None:
        if table is not None:
            for role in ("sex", "age", "view"):
                column = table.roles.get(role)
                if column and column in table.columns:
                    wanted.append((role, column))
            if "Frontal/Lateral" in table.columns:
                wanted.append(("other", "Frontal/Lateral"))
        if csv_rows is not None:
            columns = {c.lower(): c for c in csv_rows[0]}
            for role, guesses in GUESSES.items():
                hit = next((columns[g] for g in guesses if g in columns), None)
                if hit and role not in {r for r, _ in wanted}:
                    wanted.append((role, hit))
        if dicom and not wanted:
            wanted = [(role, keyword) for role, keyword in DICOM_ROLES.items()]
    else:
        wanted = [(_role(n), n) for n in names]
    attributes: list[Attribute] = []
    missing: list[str] = []
    headers: dict[str, dict[str, str]] = {}
    if dicom and any(role in DICOM_ROLES or c in DICOM_ROLES.values() for role, c in wanted):
        from cxrlab.data.dicom import subgroup_header

        headers = {p: subgroup_header(p) for p in dicom}  # header only, once per file
    for role, column in wanted:
        attr = _attribute(role, column, samples, paths, table, csv_rows, dicom, headers)
        if attr is None:
            where = [f"{Path(table.file).name}" if table is not None else None,
                     f"{Path(patient_csv).name}" if patient_csv else None,
                     "the DICOM headers" if dicom else None]  # fmt: skip
            found = ", ".join(w for w in where if w) or "the data (no label file, patient CSV or DICOM)"
            missing.append(f"subgroup {column!r} is not a column of {found}: left out")
            continue
        if any(a.name == attr.name for a in attributes):
            continue
        label = table.roles.get("label") if table is not None else None
        if label and attr.source == f"column {label!r} of {Path(table.file).name}":
            notes.append(f"{attr.name} ({attr.source}) is the label the model predicts: not a subgroup")
            continue
        levels = attr.levels()
        left = attr.blank + sum(attr.unparsed.values())
        if left:
            bad = ", ".join(f"{t!r} ×{c}" for t, c in attr.unparsed.most_common(3))
            notes.append(
                f"{attr.name}: {left} of {len(paths)} images have no usable value ({attr.blank} blank"
                + (f"; unparsed: {bad}" if bad else "")
                + "): counted here, in no group"
            )
        if len(levels) < 2:
            what = f"one value ({next(iter(levels))})" if levels else "no usable value"
            notes.append(f"{attr.name} ({attr.source}) has {what} on these images: no comparison by it")
            continue
        attributes.append(attr)
    return SubgroupData(attributes, notes, min_n, missing)


def _attribute(
    role: str, column: str, samples: list[Any], paths: list[str], table: Any, csv_rows: Any,
    dicom: list[str], headers: dict[str, dict[str, str]],
) -> Attribute | None:  # fmt: skip
    raw: list[Any] | None = None
    source = ""
    col = column if table is not None and column in table.columns else None
    if col is None and table is not None and role != "other" and table.roles.get(role) in table.columns:
        col = table.roles[role]
    if col is not None:
        at = table.columns.index(col)
        raw = [table.rows[s.row][at] if s is not None and s.row >= 0 else "" for s in samples]
        source = f"column {col!r} of {Path(table.file).name}"
    elif csv_rows is not None and column in csv_rows[0]:
        raw = [row.get(column, "") if row is not None else "" for row in csv_rows[1]]
        source = f"column {column!r} of the patient CSV"
    elif dicom and (role in DICOM_ROLES or column in DICOM_ROLES.values()):
        keyword = DICOM_ROLES.get(role, column)
        raw = [headers[p].get(keyword, "") if p in headers else "" for p in paths]
        source = f"DICOM {keyword}"
    if raw is None:
        return None
    attr = Attribute(_display(role, column), source, [])
    for text in raw:
        level = normalise(role, text)
        if level is None:
            s = "" if text is None else str(text).strip()
            if s.lower() in MISSING:
                attr.blank += 1
            else:
                attr.unparsed[s] += 1
        attr.values.append(level)
    return attr


def _csv_rows(
    patient_csv: str, root: str, paths: list[str], file_column: str
) -> tuple[list[str], list[dict[str, str] | None]] | None:
    """The patient CSV's columns and each image's row (matched on a path relative to the data folder or a
    file name; None for an image not in it)."""
    try:
        with Path(patient_csv).expanduser().open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    by_name: dict[str, dict[str, str]] = {}
    for row in rows:
        name = (row.get(file_column) or "").strip().replace("\\", "/")
        if name:
            by_name.setdefault(name, row)
    out: list[dict[str, str] | None] = []
    for p in paths:
        rel = os.path.relpath(p, root).replace(os.sep, "/") if root else p
        out.append(by_name.get(rel) or by_name.get(os.path.basename(p)))
    return columns, out
