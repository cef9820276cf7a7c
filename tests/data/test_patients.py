"""Patient CSVs (cxrlab.data.patients) as spreadsheets write them, on real images: the splits the indexer
carves never put one patient's images on two sides."""

from __future__ import annotations

import os

import pytest

from cxrlab.data.index import discover
from cxrlab.data.patients import read_patient_csv
from cxrlab.errors import DataError


@pytest.fixture()
def flat(tmp_path, kermany_dir):
    """24 real kermany NORMAL radiographs as a flat layout (classes a and b, 12 each); 6 made-up patients,
    each with 2 images in a and 2 in b."""
    files = sorted((kermany_dir / "train" / "NORMAL").iterdir())[:24]
    root = tmp_path / "data"
    rows = []
    for i, f in enumerate(files):
        cls = "a" if i < 12 else "b"
        (root / cls).mkdir(parents=True, exist_ok=True)
        os.symlink(f, root / cls / f.name)
        rows.append((cls, f.name, f"P{i % 6}"))
    return root, rows


def _write(path, header: str, lines: list[str], bom: bool) -> None:
    text = "\r\n".join([header, *lines]) + "\r\n"
    path.write_bytes((("\ufeff" if bom else "") + text).encode("utf-8"))


def test_excel_csv_with_bom_windows_paths_and_bare_names(flat, tmp_path):
    # as Excel on Windows saves "CSV UTF-8": a byte-order mark, CRLF, relative paths with backslashes;
    # half of the rows name the bare file name instead
    root, rows = flat
    lines = [f"{cls}\\{name},{p}" if i % 2 == 0 else f"{name},{p}" for i, (cls, name, p) in enumerate(rows)]
    csv_path = tmp_path / "metadata.csv"
    _write(csv_path, "filename,patientid", lines, bom=True)
    mapping = read_patient_csv(csv_path)
    assert len(mapping) == 24 and mapping[f"a/{rows[0][1]}"] == "P0" and mapping[rows[1][1]] == "P1"
    index = discover(root, patient_csv=csv_path, seed=2)
    assert {s.group for s in index.samples} == {f"P{k}" for k in range(6)}  # every image matched
    where: dict[str, set[str]] = {}
    for s in index.samples:
        where.setdefault(s.group, set()).add(s.split)
    assert all(len(v) == 1 for v in where.values()), where  # no patient on two sides
    assert {s.split for s in index.samples} == {"train", "val", "test"}


def test_missing_columns_are_named(flat, tmp_path):
    root, rows = flat
    csv_path = tmp_path / "metadata.csv"
    _write(csv_path, "file,patient", [f"{name},{p}" for _, name, p in rows], bom=True)
    with pytest.raises(DataError, match="has no column 'filename', 'patientid' \\(columns: file, patient\\)"):
        read_patient_csv(csv_path)
    assert read_patient_csv(csv_path, "file", "patient")[rows[0][1]] == "P0"
