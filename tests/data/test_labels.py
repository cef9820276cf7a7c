"""Label files (issue 13, data layer) on the real files in ../shared/data: NIH ChestX-ray14 (nih-1000 and the
full 112,120-row label file), CheXpert's train.csv and the ieee8023 covid collection's metadata.csv."""

from __future__ import annotations

import csv
import gzip
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cxrlab.config import LabelsConfig
from cxrlab.data.index import discover
from cxrlab.data.labels import CHEXPERT_FINDINGS, NIH_FINDINGS, parse_where
from cxrlab.errors import ConfigError, DataError
from tests.conftest import DATA, _need, run_cli
from tests.trust.conftest import one_line_error

NIH = DATA / "nih-1000"
COVID = DATA / "covid-ieee"
FILES = DATA / "label-files"
CHEXPERT = FILES / "chexpert_train.csv.gz"


@pytest.fixture(scope="module")
def nih() -> Path:
    return _need(NIH / "labels.csv", "nih-1000 labels")


@pytest.fixture(scope="module")
def nih_rows(nih) -> list[dict[str, str]]:
    with nih.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _nih(**kw) -> LabelsConfig:
    return LabelsConfig(file=str(NIH / "labels.csv"), format="nih", **kw)


def _straddling(index) -> int:
    where: dict[str, set[str]] = {}
    for s in index.samples:
        where.setdefault(s.group, set()).add(s.split)
    return sum(len(v) > 1 for v in where.values())


def test_nih_findings_no_finding_and_patient_splits(nih, nih_rows):
    index = discover(NIH / "images", labels=_nih())
    assert index.layout == "labels" and index.task == "multilabel"
    assert index.findings == list(NIH_FINDINGS) == index.classes
    assert len(index.samples) == 1000 and {s.label for s in index.samples} == {-1}
    by_name = {Path(s.path).name: s for s in index.samples}
    for row in nih_rows:
        targets = by_name[row["Image Index"]].targets
        wanted = set(row["Finding Labels"].split("|")) - {"No Finding"}
        assert {f for f, v in zip(index.findings, targets, strict=True) if v == 1} == wanted
        assert not np.isnan(targets).any()
    no_finding = [by_name[r["Image Index"]] for r in nih_rows if r["Finding Labels"] == "No Finding"]
    assert len(no_finding) == 499 and all(s.targets.sum() == 0 for s in no_finding)
    assert sum(s.targets.sum() > 1 for s in index.samples) == 213
    # splits made by the tool: by patient (264 of them), none in two splits
    assert len({s.group for s in index.samples}) == 264 and _straddling(index) == 0
    assert {s.split for s in index.samples} == {"train", "val", "test"}
    assert "grouped by patient" in index.split_origin["val"]
    # the metadata table travels with the index
    views = index.table.column("View Position", index.samples)
    assert Counter(views) == Counter(r["View Position"] for r in nih_rows)


def test_nih_split_column_and_findings_selection(nih, capsys):
    index = discover(NIH / "images", labels=_nih(split_column="split", findings=["effusion", "Cardiomegaly"]))
    assert Counter(s.split for s in index.samples) == {"train": 600, "val": 200, "test": 200}
    assert index.split_origin["test"] == "label file column 'split'"
    assert index.findings == ["Effusion", "Cardiomegaly"]
    assert sum(s.targets[0] for s in index.samples) == 170 and sum(s.targets[1] for s in index.samples) == 83
    # the repository's split puts 30 of the 264 patients in two splits: said, not hidden
    assert _straddling(index) == 30
    err = capsys.readouterr().err
    assert "warning: 30 of 264 patients have images in two splits of the label file column 'split'" in err


def test_where_filters_and_bad_syntax(nih, nih_rows):
    index = discover(NIH / "images", labels=_nih(where=["View Position=PA", "Patient Gender!=F"]))
    wanted = sum(r["View Position"] == "PA" and r["Patient Gender"] != "F" for r in nih_rows)
    assert len(index.samples) == wanted and index.table.filtered == 1000 - wanted
    assert parse_where("AP/PA = AP|PA") == ("AP/PA", "=", {"AP", "PA"})
    with pytest.raises(ConfigError, match="expected COLUMN=VALUE"):
        parse_where("View Position PA")


@pytest.fixture(scope="module")
def chexpert_small(tmp_path_factory) -> tuple[Path, Path, list[dict[str, str]]]:
    """The first 800 rows of CheXpert's real train.csv (gzipped) and an empty file for each image."""
    _need(CHEXPERT, "CheXpert label file")
    root = tmp_path_factory.mktemp("chexpert")
    with gzip.open(CHEXPERT, "rt", newline="") as fh:
        lines = [next(fh) for _ in range(801)]
    file = root / "train.csv.gz"
    with gzip.open(file, "wt", newline="") as fh:
        fh.writelines(lines)
    rows = list(csv.DictReader(lines))
    for r in rows:
        image = root / r["Path"]
        image.parent.mkdir(parents=True, exist_ok=True)
        image.touch()
    return root, file, rows


@pytest.mark.parametrize("policy", ["ignore", "zeros", "ones"])
def test_chexpert_uncertainty_policies(chexpert_small, policy):
    root, file, rows = chexpert_small
    cfg = LabelsConfig(file=str(file), format="chexpert", uncertainty=policy)
    index = discover(root, labels=cfg)
    assert index.findings == list(CHEXPERT_FINDINGS)  # No Finding is not a finding
    assert len(index.samples) == 800 and len({s.group for s in index.samples}) == len(
        {r["Path"].split("/")[2] for r in rows}
    )
    assert _straddling(index) == 0
    by_path = {s.path: s.targets for s in index.samples}
    for name in ["Edema", "Pleural Effusion", "Cardiomegaly", "Support Devices"]:
        col = index.findings.index(name)
        values = np.array([by_path[str(root / r["Path"])][col] for r in rows])
        codes = Counter(r[name] for r in rows)
        assert codes["-1.0"] > 0, name  # the columns tested hold uncertain labels
        nan, ones, zeros = np.isnan(values).sum(), (values == 1).sum(), (values == 0).sum()
        unc = codes["-1.0"]
        expected = {
            "ignore": (unc, codes["1.0"], codes["0.0"] + codes[""]),
            "zeros": (0, codes["1.0"], codes["0.0"] + codes[""] + unc),
            "ones": (0, codes["1.0"] + unc, codes["0.0"] + codes[""]),
        }[policy]
        assert (nan, ones, zeros) == expected, name


def test_chexpert_frontal_filter_and_prefix(chexpert_small):
    root, file, rows = chexpert_small
    cfg = LabelsConfig(file=str(file), format="chexpert", where=["Frontal/Lateral=Frontal"], blank="ignore")
    # --data may also be the CheXpert-v1.0-small folder itself, the folder the paths name first
    index = discover(root / "CheXpert-v1.0-small", labels=cfg)
    frontal = [r for r in rows if r["Frontal/Lateral"] == "Frontal"]
    assert 0 < len(frontal) < len(rows) and len(index.samples) == len(frontal)
    edema = index.findings.index("Edema")
    blank = sum(r["Edema"] == "" for r in frontal)
    uncertain = sum(r["Edema"] == "-1.0" for r in frontal)
    assert sum(math.isnan(s.targets[edema]) for s in index.samples) == blank + uncertain


def test_missing_images_one_line(nih, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    present = sorted((NIH / "images").iterdir())[:40]
    for p in present:
        shutil.copy(p, images / p.name)
    index = discover(images, labels=_nih())
    assert len(index.samples) == 40 and index.missing == 960
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "have no image" in ln]
    assert len(lines) == 1
    start = f"warning: 960 of 1,000 rows of {NIH / 'labels.csv'} have no image under {images}"
    assert lines[0].startswith(start)
    assert "(first: 00000" in lines[0] and lines[0].endswith("continuing with 40")


@pytest.mark.parametrize(
    ("name", "fmt", "rows", "first"),
    [
        ("nih_Data_Entry_2017_v2020.csv.gz", "nih", "112,120", "00000001_000.png"),
        ("chexpert_train.csv.gz", "chexpert", "223,414", "CheXpert-v1.0-small/train/patient00001/"),
    ],
)
def test_full_label_files_without_images(tmp_path, name, fmt, rows, first):
    file = _need(FILES / name, "label-files")
    with pytest.raises(DataError) as exc:
        discover(tmp_path, labels=LabelsConfig(file=str(file), format=fmt))
    message = f"none of the {rows} rows of {file} has its image under {tmp_path} (first: {first}"
    assert message in str(exc.value)


def test_column_mismatch_names_the_columns(nih):
    with pytest.raises(DataError) as exc:
        discover(NIH / "images", labels=LabelsConfig(file=str(NIH / "labels.csv"), format="chexpert"))
    message = str(exc.value)
    assert "has no column 'Path'" in message
    assert "(its columns: Image Index, Finding Labels, Follow-up #, Patient ID," in message
    assert message.endswith("is it --labels-format nih?")


def test_covid_ieee_single_label():
    file = _need(COVID / "labels.csv", "covid-ieee")
    index = discover(COVID / "images", labels=LabelsConfig(file=str(file), format="covid-ieee"))
    assert index.task == "single" and index.findings == []
    assert index.classes == ["COVID-19", "COVID-19, ARDS"]
    assert sum(index.counts()[s]["COVID-19, ARDS"] for s in ("train", "val", "test")) == 12
    assert len({s.group for s in index.samples}) == 132 and _straddling(index) == 0
    assert all(s.targets is None for s in index.samples)


# --------------------------------------------------------------------------- the real CLI


def _train(*args: str):
    return run_cli("train", "--model", "small_cnn", "--image-size", "32", "--epochs", "1", "-q",
                   "--no-tensorboard", *args)  # fmt: skip


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown preset", "unknown label-file format 'nihh'; known: generic, nih, chexpert, mimic"),
        ("empty file", "is empty; it needs a header row and one row per image"),
        ("binary garbage", "is not a text label file (binary content); give a CSV or TSV file"),
        ("bad where", "--where 'View Position PA': expected COLUMN=VALUE or COLUMN!=VALUE"),
        ("multi-label sigmoid head", "model.head.output=sigmoid is for binary tasks; a multi-label run"),
        ("all missing", "none of the 1,000 rows of"),
    ],
)
def test_bad_label_inputs_one_line(nih, tmp_path, case, expected):
    labels, data, extra = str(NIH / "labels.csv"), str(NIH / "images"), ["--labels-format", "nih"]
    if case == "unknown preset":
        extra = ["--labels-format", "nihh"]
    elif case == "empty file":
        (tmp_path / "empty.csv").write_bytes(b"")
        labels = str(tmp_path / "empty.csv")
    elif case == "binary garbage":
        (tmp_path / "garbage.csv").write_bytes(np.random.default_rng(0).bytes(4096))
        labels = str(tmp_path / "garbage.csv")
    elif case == "multi-label sigmoid head":
        extra += ["--set", "model.head.output=sigmoid"]
    elif case == "bad where":
        extra += ["--where", "View Position PA"]
    elif case == "all missing":
        data = str(tmp_path / "no-images")
        (tmp_path / "no-images").mkdir()
    proc = _train("--data", data, "--labels", labels, *extra, "--out", str(tmp_path / "run"))
    assert expected in one_line_error(proc)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_cli_single_label_run_from_label_file(tmp_path):
    """`cxr train --labels` end to end on covid-ieee's view column (PA / AP / AP Supine; no laterals)."""
    file = _need(COVID / "labels.csv", "covid-ieee")
    out = tmp_path / "run"
    proc = _train("--data", str(COVID / "images"), "--labels", str(file), "--labels-format", "covid-ieee",
                  "--label-column", "view", "--where", "view!=L", "--set", "eval.tsne=false",
                  "--set", "eval.bootstrap=50", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with (out / "splits.csv").open(newline="") as fh:
        split_rows = list(csv.DictReader(fh))
    assert {r["class"] for r in split_rows} == {"PA", "AP", "AP Supine"} and len(split_rows) == 222
    where: dict[str, set[str]] = {}
    for r in split_rows:
        where.setdefault(r["group"], set()).add(r["split"])
    assert all(len(v) == 1 for v in where.values())  # patients from patientid, never in two splits
    assert "label_column: view" in (out / "config.yaml").read_text()


def test_tsv_label_file_reads_as_the_csv(nih, tmp_path):
    """nih-1000's labels.csv re-written tab-separated (with commas inside cells, as Follow-up notes may
    have): the same findings, patients and metadata."""
    with nih.open(newline="") as fh:
        rows = list(csv.reader(fh))
    rows[1][2] = "1, see notes"  # a comma inside a cell of a TSV is text, not a separator
    tsv = tmp_path / "labels.tsv"
    with tsv.open("w", newline="") as fh:
        csv.writer(fh, delimiter="\t").writerows(rows)
    want = discover(NIH / "images", labels=_nih())
    got = discover(NIH / "images", labels=LabelsConfig(file=str(tsv), format="nih"))
    assert got.findings == want.findings and len(got.samples) == len(want.samples) == 1000
    for a, b in zip(got.samples, want.samples, strict=True):
        assert (a.path, a.group, a.split) == (b.path, b.group, b.split)
        assert np.array_equal(a.targets, b.targets)
    assert got.table.column("Follow-up #", got.samples[:1]) == ["1, see notes"]


@pytest.mark.parametrize("policy", ["ignore", "zeros", "ones"])
def test_finding_cells_written_as_other_numbers_follow_the_policies(chexpert_small, tmp_path, policy):
    """CheXpert cells written with more decimals (1.00 / 0.00 / -1.00, as a spreadsheet may save them) are the
    same labels: the uncertainty policy applies to -1.00 as to -1.0."""
    root, file, rows = chexpert_small
    columns = list(rows[0])
    respelled = root / f"respelled-{policy}.csv"
    spell = {"1.0": "1.00", "0.0": "0.00", "-1.0": "-1.00"}
    with respelled.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({c: spell.get(v, v) if c in CHEXPERT_FINDINGS else v for c, v in r.items()})
    want = discover(root, labels=LabelsConfig(file=str(file), format="chexpert", uncertainty=policy))
    got = discover(root, labels=LabelsConfig(file=str(respelled), format="chexpert", uncertainty=policy))
    assert sum(r["Edema"] == "-1.0" for r in rows) > 0
    by_path = {s.path: s.targets for s in want.samples}
    assert len(got.samples) == len(by_path) == 800
    for s in got.samples:
        assert np.array_equal(s.targets, by_path[s.path], equal_nan=True), s.path
