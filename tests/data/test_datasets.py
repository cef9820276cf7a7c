"""cxrlab.datasets.open on real data, against outside readers: torchvision's ImageFolder (class folders),
medmnist's PneumoniaMNIST (.npz), pandas on the label files (NIH, CheXpert rows), pydicom (DICOM headers)."""

from __future__ import annotations

import gzip
import re
import shutil
import sys

import numpy as np
import pytest
import torch

import cxrlab
from cxrlab.data.images import load_gray
from cxrlab.errors import CxrError
from tests.conftest import DATA, _need

pd = pytest.importorskip("pandas")

NIH = DATA / "nih-1000"
DICOM = DATA / "dicom"
CHEXPERT = DATA / "label-files" / "chexpert_train.csv.gz"


def _str(value):
    """A text cell, None where pandas holds a missing value (NaN)."""
    return value if isinstance(value, str) else None


@pytest.fixture(scope="module")
def nih():
    _need(NIH, "nih-1000 dataset")
    return cxrlab.datasets.open(NIH / "images", labels=NIH / "labels.csv", preset="nih", size=32)


def test_reachable_from_the_package():
    assert "datasets" in cxrlab.__all__
    import cxrlab.datasets as ds_module

    assert cxrlab.datasets is ds_module and callable(ds_module.open)


def test_class_folders_match_torchvision_image_folder(covid_dir):
    from torchvision.datasets import ImageFolder

    ds = cxrlab.datasets.open(covid_dir, size=32)
    meta = ds.metadata
    assert ds.task == "single" and ds.findings == []
    assert list(meta.columns[:3]) == ["path", "patient", "split"] and "label" in meta
    for split, folder in (("test", "test"), ("train", "train")):
        oracle = ImageFolder(covid_dir / folder)
        assert ds.classes == oracle.classes
        want = {(str(p), oracle.classes[y]) for p, y in oracle.samples}
        # the carved val split comes from train/, as cxr train carves it
        rows = meta[meta.split.isin(["train", "val"] if split == "train" else ["test"])]
        assert set(zip(rows.path, rows.label, strict=True)) == want
    # patients from the file-name pattern (Kermany's personN), unknown elsewhere
    for path, patient in zip(meta.path, meta.patient, strict=True):
        found = re.search(r"(person\d+)[_-]", path.rsplit("/", 1)[1])
        assert _str(patient) == (found.group(1) if found else None)
    assert meta.patient.notna().sum() > 100 and meta.view.isna().all() and meta.age.isna().all()
    x, y = ds[3]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert y == ds.classes.index(meta.label[3])
    np.testing.assert_array_equal((x[0] * 255).round().numpy().astype(np.uint8), load_gray(meta.path[3], 32))
    # one-hot labels as torchxrayvision's .labels
    assert ds.labels.shape == (len(ds), 4) and (ds.labels.sum(1) == 1).all()


def test_splits_are_the_ones_cxr_train_makes(covid_dir):
    """run_config() gives the data section whose prepared splits are the metadata's (the training path)."""
    from cxrlab.data.prepare import prepare_data

    ds = cxrlab.datasets.open(covid_dir, classes=["covid", "normal"], size=32, seed=3, val_fraction=0.25)
    cfg = ds.run_config()
    assert cfg.train.seed == 3 and cfg.data.image_size == 32
    prepared = prepare_data(cfg.data, 32, seed=cfg.train.seed, progress=False)
    meta = ds.metadata
    for split in ("train", "val", "test"):
        assert sorted(prepared.paths[split]) == sorted(meta.path[meta.split == split])
    images = ds.images()
    for split in ("train", "test"):
        rows = np.flatnonzero(meta.split == split)
        order = {p: i for i, p in enumerate(prepared.paths[split])}
        same = [order[p] for p in meta.path[rows]]
        np.testing.assert_array_equal(images[rows], prepared.images[split][same])


def test_npz_matches_medmnist(pneumoniamnist_npz):
    from medmnist import PneumoniaMNIST

    ds = cxrlab.datasets.open(pneumoniamnist_npz)
    assert ds.size == 28 and ds.classes == ["normal", "pneumonia"] and len(ds) == 5856
    for split in ("train", "val", "test"):
        oracle = PneumoniaMNIST(split=split, root=str(pneumoniamnist_npz.parent), download=False)
        part = ds.split(split)
        np.testing.assert_array_equal(part.images(), oracle.imgs)
        np.testing.assert_array_equal(part.targets, oracle.labels[:, 0])
        x, y = part[7]
        np.testing.assert_array_equal((x[0] * 255).round().numpy(), oracle.imgs[7])
        assert y == int(oracle.labels[7, 0])
    test = cxrlab.datasets.open(pneumoniamnist_npz, split="test", size=64)
    assert len(test) == 624 and set(test.metadata.split) == {"test"} and test[0][0].shape == (1, 64, 64)


def test_nih_label_file_against_pandas(nih):
    raw = pd.read_csv(NIH / "labels.csv").set_index("Image Index")
    meta = nih.metadata
    assert nih.task == "multilabel" and len(nih.findings) == 14 and nih.findings == nih.classes
    assert len(meta) == len(raw) == 1000
    meta["edited"] = 1  # a copy: the next table is as it was
    assert "edited" not in nih.metadata
    rows = raw.loc[[p.rsplit("/", 1)[1] for p in meta.path]]
    for finding in nih.findings:
        want = rows["Finding Labels"].str.split("|").apply(lambda fs, f=finding: float(f in fs)).to_numpy()
        np.testing.assert_array_equal(meta[finding].to_numpy(), want)
    assert (meta.sex.to_numpy() == rows["Patient Gender"].to_numpy()).all()
    np.testing.assert_array_equal(meta.age.to_numpy(), rows["Patient Age"].to_numpy(float))
    assert (meta.view.to_numpy() == rows["View Position"].to_numpy()).all()
    assert (meta.patient.to_numpy() == rows["Patient ID"].astype(str).to_numpy()).all()
    # the file's own split column is kept, renamed: cxrlab's splits are carved by patient
    assert (meta["split (label file)"].to_numpy() == rows["split"].to_numpy()).all()
    assert meta.groupby("patient").split.nunique().max() == 1
    x, y = nih[0]
    assert x.shape == (1, 32, 32) and y.dtype == torch.float32 and y.shape == (14,)
    np.testing.assert_array_equal(y.numpy(), meta.loc[0, nih.findings].to_numpy(np.float32))


def test_nih_where_findings_and_subsets(nih):
    pa = cxrlab.datasets.open(NIH / "images", labels=NIH / "labels.csv", preset="nih", size=32,
                              where="View Position=PA", findings=["Effusion", "Mass"])  # fmt: skip
    raw = pd.read_csv(NIH / "labels.csv")
    assert len(pa) == (raw["View Position"] == "PA").sum() and pa.findings == ["Effusion", "Mass"]
    women = nih.subset(nih.metadata.sex == "F")
    assert len(women) == (raw["Patient Gender"] == "F").sum() and set(women.metadata.sex) == {"F"}
    last = nih.subset([-1, 0])
    assert list(last.paths) == [nih.paths[-1], nih.paths[0]]
    test = nih.split("test")
    assert len(test) == (nih.metadata.split == "test").sum()
    batch = next(iter(torch.utils.data.DataLoader(test, batch_size=8)))
    assert batch[0].shape == (8, 1, 32, 32) and batch[1].shape == (8, 14)


def test_merge_unites_findings_with_nan_for_the_unknown(nih, covid_dir):
    both = cxrlab.datasets.open(covid_dir, classes=["covid", "normal"], size=32)
    with pytest.raises(CxrError, match="cannot merge a single-label dataset with a multi-label one"):
        nih.merge(both)
    pa = cxrlab.datasets.open(NIH / "images", labels=NIH / "labels.csv", preset="nih", size=32,
                              where="View Position=PA", findings=["Effusion", "Hernia"])  # fmt: skip
    ap = cxrlab.datasets.open(NIH / "images", labels=NIH / "labels.csv", preset="nih", size=32,
                              where="View Position=AP", findings=["Mass", "Effusion"])  # fmt: skip
    merged = pa + ap
    assert merged.findings == ["Effusion", "Hernia", "Mass"] and len(merged) == len(pa) + len(ap)
    labels = merged.labels
    np.testing.assert_array_equal(labels[: len(pa), 0], pa.metadata.Effusion.to_numpy(np.float32))
    np.testing.assert_array_equal(labels[len(pa) :, 0], ap.metadata.Effusion.to_numpy(np.float32))
    assert np.isnan(labels[: len(pa), 2]).all() and np.isnan(labels[len(pa) :, 1]).all()
    assert not np.isnan(labels[: len(pa), :2]).any() and not np.isnan(labels[len(pa) :, [0, 2]]).any()
    assert merged.metadata.Hernia.isna().sum() == len(ap)
    y = merged[len(pa)][1]
    assert torch.isnan(y[1]) and not torch.isnan(y[[0, 2]]).any()
    # single-label merges unite classes, in the first dataset's order first
    covid4 = cxrlab.datasets.open(covid_dir, size=28, split="test")
    mnist = cxrlab.datasets.open(DATA / "pneumoniamnist" / "pneumoniamnist.npz", split="val")
    mixed = covid4.merge(mnist)
    assert mixed.classes == ["covid", "normal", "pneumonia_bac", "pneumonia_vir", "pneumonia"]
    np.testing.assert_array_equal(mixed.targets[len(covid4) :], np.where(mnist.targets == 0, 1, 4))
    assert mixed.images().shape == (len(covid4) + len(mnist), 28, 28)
    np.testing.assert_array_equal(mixed.images()[len(covid4) :], mnist.images())


def test_chexpert_uncertain_labels_are_nan(tmp_path):
    """Real CheXpert label rows (and real NIH pixels at their paths): -1 is NaN under the default
    uncertainty policy 'ignore', blank is 0, as pandas reads the same rows."""
    _need(CHEXPERT, "CheXpert label file")
    _need(NIH, "nih-1000 dataset")
    with gzip.open(CHEXPERT, "rt") as fh:
        lines = [next(fh) for _ in range(41)]
    (tmp_path / "labels.csv").write_text("".join(lines))
    pngs = sorted((NIH / "images").iterdir())
    raw = pd.read_csv(tmp_path / "labels.csv")
    for path, png in zip(raw.Path, pngs, strict=False):
        dst = tmp_path / path
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, dst)
    ds = cxrlab.datasets.open(tmp_path / "CheXpert-v1.0-small", labels=tmp_path / "labels.csv",
                              preset="chexpert", size=32)  # fmt: skip
    meta = ds.metadata.set_index(ds.metadata.path.str.split("CheXpert-v1.0-small/").str[1])
    rows = raw.set_index(raw.Path.str.split("CheXpert-v1.0-small/").str[1]).loc[meta.index]
    for finding in ds.findings:
        want = rows[finding].replace(-1.0, np.nan).fillna(0.0).where(rows[finding] != -1.0)
        np.testing.assert_array_equal(meta[finding].to_numpy(), want.to_numpy())
    assert np.isnan(ds.labels).any()
    assert set(meta.sex) <= {"M", "F", None} and (meta.sex == "F").sum() == (rows.Sex == "Female").sum()
    np.testing.assert_array_equal(meta.age.to_numpy(), rows.Age.to_numpy(float))
    assert (meta.patient.to_numpy() == rows.index.str.extract(r"(patient\d+)")[0].to_numpy()).all()
    zeros = cxrlab.datasets.open(tmp_path / "CheXpert-v1.0-small", labels=tmp_path / "labels.csv",
                                 preset="chexpert", size=32, uncertainty="zeros")  # fmt: skip
    assert not np.isnan(zeros.labels).any()


def test_dicom_folder(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    _need(DICOM, "DICOM test files")
    ds = cxrlab.datasets.open(DICOM, size=64)
    meta = ds.metadata
    files = sorted(p for p in DICOM.iterdir() if p.suffix == ".dcm")
    assert ds.task == "unlabelled" and ds.classes == [] and sorted(meta.path) == [str(p) for p in files]
    assert meta.split.isna().all() and meta.label.isna().all()
    assert meta.sex.isna().all() and meta.age.isna().all()  # never read from DICOM headers
    for i, path in enumerate(meta.path):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        assert _str(meta.view[i]) == (str(getattr(header, "ViewPosition", "")).strip() or None)
        np.testing.assert_array_equal(ds.image(i), load_gray(path, 64))
        assert ds[i][1] == -1
    by_id = {}
    for path, patient in zip(meta.path, meta.patient, strict=True):
        pid = str(getattr(pydicom.dcmread(path, stop_before_pixels=True), "PatientID", "") or "")
        if pid:
            assert patient.startswith("pid-") and pid not in patient  # a salted hash, never the id
            by_id.setdefault(pid, set()).add(patient)
    assert by_id and all(len(v) == 1 for v in by_id.values())


def test_unreadable_images_are_named_and_can_be_left_out(tmp_path, covid_dir):
    for cls in ("covid", "normal"):
        (tmp_path / cls).mkdir()
        for f in sorted((covid_dir / "train" / cls).iterdir())[:6]:
            shutil.copy(f, tmp_path / cls / f.name)
    (tmp_path / "normal" / "broken.png").write_bytes(b"not a png")
    ds = cxrlab.datasets.open(tmp_path, size=32)
    at = ds.paths.index(str(tmp_path / "normal" / "broken.png"))
    with pytest.raises(CxrError, match=r"broken\.png: .*ds\.readable\(\)"):
        ds[at]
    with pytest.raises(CxrError, match=r"1 of 13 images are unreadable .*ds = ds\.readable\(\)"):
        ds.images()
    good = ds.readable()
    assert len(good) == 12 and str(tmp_path / "normal" / "broken.png") not in good.paths


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: cxrlab.datasets.open("/nonexistent/folder"), "data not found: /nonexistent/folder"),
        (lambda: cxrlab.datasets.open(DATA / "covid-challenge", preset="nih"), "with labels=FILE.csv"),
        (lambda: cxrlab.datasets.open(DATA / "covid-challenge", split="dev"), "split 'dev': choose train"),
        (lambda: cxrlab.datasets.open(DATA / "covid-challenge", size=0), "size 0: give a positive number"),
        (lambda: cxrlab.datasets.open(DATA / "covid-challenge", uncertainty="zeros"), "to a label file"),
        (lambda: cxrlab.datasets.open(NIH / "images", labels=NIH / "labels.csv", preset="nih", colour="red"),
         "unknown label file option 'colour'; known: image_column"),
        (lambda: cxrlab.datasets.open(NIH / "images", labels=NIH / "labels.csv", preset="mimik"),
         "label file option format: Value error, unknown label-file format 'mimik'"),
        (lambda: cxrlab.datasets.open(NIH / "images", labels=NIH / "labels.csv", preset="chexpert"),
         "has no column 'Path'"),
        (lambda: cxrlab.datasets.open(42), "path is a int; give a folder"),
        (lambda: cxrlab.datasets.open(NIH / "images", labels=NIH / "labels.csv", preset="nih", classes="A"),
         "is multi-label: pick with findings="),
    ],
)
def test_bad_input_is_one_line(call, message):
    _need(NIH, "nih-1000 dataset")
    with pytest.raises(CxrError) as exc:
        call()
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_bad_use_of_a_dataset_is_one_line(nih, monkeypatch):
    for call, message in [
        (lambda: nih.subset(np.ones(3, bool)), "a mask of 3 values for a dataset of 1,000 images"),
        (lambda: nih.subset([1000]), "position 1000 is out of range for 1,000 images"),
        (lambda: nih.subset([0.5]), "subset takes positions (ints) or a boolean mask"),
        (lambda: nih["x"], "index 'x': give an int position"),
        (lambda: nih.merge([1, 2]), "merge takes another cxrlab dataset"),
        (lambda: nih.merge(cxrlab.datasets.open(DICOM, size=64)), "cannot merge images of 64 px"),
        (lambda: nih.split("dev"), "split 'dev': choose train, val or test"),
        (lambda: nih.subset([1, 2]).run_config(), "run_config needs a labelled dataset"),
    ]:
        with pytest.raises(CxrError) as exc:
            call()
        assert message in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(IndexError):
        nih[1000]
    fresh = nih.subset(np.arange(10))
    monkeypatch.setitem(sys.modules, "pandas", None)  # pandas not installed
    with pytest.raises(CxrError, match=r"optional dependency pandas: pip install 'cxrlab\[datasets\]'"):
        _ = fresh.metadata
    rows = fresh.records()  # the same table without pandas
    assert len(rows) == 10 and rows[0]["path"] == nih.paths[0] and rows[0]["Effusion"] in (0.0, 1.0)
