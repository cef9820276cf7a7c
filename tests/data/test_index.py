from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest

from cxrlab.data.index import discover, small_val_warning
from cxrlab.errors import DataError
from tests.conftest import run_cli


def test_split_layout_covid(covid_dir):
    idx = discover(covid_dir)
    assert idx.layout == "splits"
    assert idx.classes == ["covid", "normal", "pneumonia_bac", "pneumonia_vir"]
    counts = idx.counts()
    assert sum(counts["test"].values()) == 124
    assert sum(counts["train"].values()) + sum(counts["val"].values()) == 316
    assert "val" in idx.split_origin  # carved from train


def test_classes_select_and_order(covid_dir):
    idx = discover(covid_dir, classes=["normal", "covid"])
    assert idx.classes == ["normal", "covid"]
    assert {s.label for s in idx.samples} == {0, 1}
    with pytest.raises(DataError, match="class 'lungs' not found.*available: covid"):
        discover(covid_dir, classes=["lungs", "covid"])


def test_kermany_official_split_and_patient_groups(kermany_dir):
    idx = discover(kermany_dir)
    counts = idx.counts()
    assert counts["val"] == {"NORMAL": 8, "PNEUMONIA": 8}
    assert counts["test"] == {"NORMAL": 234, "PNEUMONIA": 390}
    pneu = [s for s in idx.samples if "person" in os.path.basename(s.path)]
    assert pneu and all(s.group.startswith("person") for s in pneu)


def test_flat_layout_gets_grouped_stratified_splits(tmp_path, kermany_dir):
    # class folders without splits: the tool makes train/val/test, never splitting a patient
    src = kermany_dir / "train" / "PNEUMONIA"
    files = sorted(src.iterdir())[:150]
    for cls, chunk in (
        ("PNEUMONIA", files[:100]),
        ("NORMAL", sorted((kermany_dir / "train" / "NORMAL").iterdir())[:60]),
    ):
        (tmp_path / cls).mkdir()
        for f in chunk:
            os.symlink(f, tmp_path / cls / f.name)
    idx = discover(tmp_path, seed=3)
    assert idx.layout == "classes"
    splits_by_group: dict[str, set[str]] = {}
    for s in idx.samples:
        splits_by_group.setdefault(s.group, set()).add(s.split)
    assert all(len(v) == 1 for v in splits_by_group.values())
    counts = idx.counts()
    total = sum(sum(c.values()) for c in counts.values())
    assert 0.12 < sum(counts["test"].values()) / total < 0.28
    assert discover(tmp_path, seed=3).counts() == counts  # same seed, same split


def test_npz(pneumoniamnist_npz):
    idx = discover(pneumoniamnist_npz)
    assert idx.classes == ["normal", "pneumonia"]
    assert len(idx.split("train")) == 4708 and len(idx.split("test")) == 624


def test_npz_without_keys(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, images=np.zeros((3, 28, 28)))
    with pytest.raises(DataError, match="lacks the MedMNIST keys"):
        discover(path)


@pytest.mark.parametrize("case", ["missing", "one_class", "empty_class", "only_in_test", "train_not_test"])
def test_folder_errors(tmp_path, covid_dir, case):
    src = sorted((covid_dir / "train" / "normal").iterdir())

    def fill(folder, n=6):
        folder.mkdir(parents=True, exist_ok=True)
        for f in src[:n]:
            shutil.copy(f, folder / f.name)

    root = tmp_path / "d"
    if case == "one_class":
        fill(root / "normal")
    elif case == "empty_class":
        fill(root / "normal")
        (root / "covid").mkdir()
    elif case == "only_in_test":
        fill(root / "train" / "a")
        fill(root / "train" / "b")
        fill(root / "test" / "a")
        fill(root / "test" / "b")
        fill(root / "test" / "c")
    elif case == "train_not_test":
        fill(root / "train" / "a")
        fill(root / "train" / "b")
        fill(root / "test" / "a")
    expected = {
        "missing": "data not found",
        "one_class": "only one class",
        "empty_class": "holds no images",
        "only_in_test": "class 'c' has no training images",
        "train_not_test": "in train but not in test",
    }
    with pytest.raises(DataError, match=expected[case]):
        discover(root)


def test_unicode_spaces_non_images_and_symlink_loop(tmp_path, covid_dir):
    root = tmp_path / "données radiographie"
    for cls in ("covid ü", "normal"):
        (root / cls).mkdir(parents=True)
        for f in sorted((covid_dir / "train" / cls.split()[0]).iterdir())[:8]:
            shutil.copy(f, root / cls / f"image ü {f.name}")
        (root / cls / "notes.txt").write_text("not an image")
    os.symlink(root / "normal", root / "normal" / "loop")
    idx = discover(root)
    assert idx.classes == ["covid ü", "normal"]
    assert len(idx.samples) == 16
    assert idx.ignored_files == 2


def _person(path: str) -> str | None:
    found = re.search(r"(person\d+)[_-]", os.path.basename(path))
    return found.group(1) if found else None


def test_kermany_val_split_carve_merges_the_tiny_given_val(kermany_dir):
    given = discover(kermany_dir)
    given_val = {s.path for s in given.split("val")}
    assert len(given_val) == 16
    assert small_val_warning(given.counts(), given.split_origin).startswith(
        "The given validation split is tiny (16 images: NORMAL 8, PNEUMONIA 8; fewer than 30 of some class)"
    )
    assert "--val-split carve" in small_val_warning(given.counts(), given.split_origin)
    idx = discover(kermany_dir, val_split="carve")
    counts = idx.counts()
    assert counts["test"] == given.counts()["test"]  # the official test split is untouched
    for c, n in {"NORMAL": 1341 + 8, "PNEUMONIA": 3875 + 8}.items():
        assert counts["train"][c] + counts["val"][c] == n
        assert 0.17 < counts["val"][c] / n < 0.23  # 20% (data.val_fraction), stratified
    by_path = {s.path: s.split for s in idx.samples}
    assert {by_path[p] for p in given_val} <= {"train", "val"}  # the 16 are back in the pool
    persons = {split: {_person(s.path) for s in idx.split(split)} - {None} for split in ("train", "val")}
    assert persons["val"] and not persons["train"] & persons["val"]  # patient-grouped
    assert idx.split_origin["val"] == (
        "the given validation split (16 images: NORMAL 8, PNEUMONIA 8) merged into train (val_split carve); "
        f"carved from train: {sum(counts['val'].values())} images (20%), stratified by class, grouped by "
        "patient, seed 0"
    )
    assert small_val_warning(counts, idx.split_origin) is None
    assert discover(kermany_dir, val_split="carve").counts() == counts  # seeded: the same split again
    auto = discover(kermany_dir, val_split="auto")  # 8 per class < 30: auto carves too
    assert auto.counts() == counts and "val_split auto: fewer than 30" in auto.split_origin["val"]


def test_val_split_auto_keeps_a_large_given_val_and_rejects_unknown(pneumoniamnist_npz, kermany_dir):
    idx = discover(pneumoniamnist_npz, val_split="auto")  # 524 given validation images: kept as they are
    assert len(idx.split("val")) == 524 and "val" not in idx.split_origin
    assert small_val_warning(idx.counts(), idx.split_origin) is None
    with pytest.raises(DataError, match="val_split 'sometimes': choose given, carve or auto"):
        discover(kermany_dir, val_split="sometimes")


def test_cli_val_split(kermany_dir, tmp_path):
    common = ["--data", str(kermany_dir), "--model", "small_cnn", "--image-size", "32", "--epochs", "1",
              "--max-per-class", "20", "-q", "--no-tensorboard", "--set", "eval.tsne=false",
              "--set", "eval.bootstrap=50"]  # fmt: skip
    proc = run_cli("train", *common, "--val-split", "carve", "--out", str(tmp_path / "carve"), check=True)
    assert "validation split is tiny" not in proc.stderr
    data = json.loads((tmp_path / "carve" / "metrics.json").read_text())["data"]
    assert data["counts"]["val"] == {"NORMAL": 4, "PNEUMONIA": 4}
    assert data["split_origin"]["val"].startswith("the given validation split (16 images")
    assert "merged into train (val_split carve)" in (tmp_path / "carve" / "report.html").read_text()
    proc = run_cli("train", *common, "--out", str(tmp_path / "given"), check=True)
    assert "warning: The given validation split is tiny (16 images" in proc.stderr
    assert "--val-split carve" in proc.stderr
    proc = run_cli("train", *common, "--val-split", "often", "--out", str(tmp_path / "bad"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "'data.val_split': Input should be 'given', 'carve' or 'auto'" in proc.stderr


def test_carved_splits_are_their_fractions_of_all_images(tmp_path, kermany_dir):
    """data.val_fraction and data.test_fraction are shares of the whole data set (20% + 20% by default):
    test is carved from what is left after val, as 0.2 / 0.8 of it, patient-grouped and stratified."""
    for cls in ("NORMAL", "PNEUMONIA"):
        (tmp_path / cls).mkdir()
        for f in sorted((kermany_dir / "train" / cls).iterdir())[:400]:
            os.symlink(f, tmp_path / cls / f.name)
    idx = discover(tmp_path, seed=1)
    counts = idx.counts()
    for split, share in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        n = sum(counts[split].values())
        assert abs(n / 800 - share) < 0.025, (split, n, counts)
    where: dict[str, set[str]] = {}
    for s in idx.samples:
        where.setdefault(s.group, set()).add(s.split)
    assert all(len(v) == 1 for v in where.values())
