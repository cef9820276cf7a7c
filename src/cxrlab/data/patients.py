"""Patient ids from a metadata CSV (e.g. ieee8023's metadata.csv): the indexer groups images by them, so
that splits never put one patient's images on both sides."""

from __future__ import annotations

import csv
from pathlib import Path

from cxrlab.errors import DataError


def read_patient_csv(
    csv_path: str | Path, file_column: str = "filename", patient_column: str = "patientid"
) -> dict[str, str]:
    """``{file name or relative path: patient id}`` from a metadata CSV (e.g. ieee8023's metadata.csv)."""
    path = Path(csv_path).expanduser()
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            missing = [c for c in (file_column, patient_column) if c not in columns]
            if missing:
                raise DataError(
                    f"{path} has no column {', '.join(map(repr, missing))} (columns: {', '.join(columns)}); "
                    "name them with --file-column and --patient-column"
                )
            mapping: dict[str, str] = {}
            for row in reader:
                name, patient = (row.get(file_column) or "").strip(), (row.get(patient_column) or "").strip()
                if name and patient:
                    mapping[name.replace("\\", "/")] = patient
    except FileNotFoundError:
        raise DataError(f"patient CSV not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read patient CSV {path}: {exc}") from None
    if not mapping:
        raise DataError(f"{path}: no rows with both {file_column!r} and {patient_column!r} filled in")
    return mapping
