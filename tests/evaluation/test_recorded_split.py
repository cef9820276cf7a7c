"""`cxr evaluate RUN` scores the test split recorded in RUN/splits.csv, each image checked against its
SHA-256 (issue 27 item 5): images added to the data do not move it; a changed or missing test image is one
line naming it; --allow-changed scores what remains and says so. Real images (kermany-224, PneumoniaMNIST)
and real trainings."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxrlab.config import RunConfig
from cxrlab.data.index import discover
from tests.conftest import run_cli
from tests.trust.conftest import one_line_error

FAST = ("--model", "small_cnn", "--image-size", "32", "--epochs", "1", "-q", "--no-tensorboard",
        "--set", "eval.explain=off", "--set", "eval.tsne=false", "--set", "eval.bootstrap=50")  # fmt: skip


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _test_rows(run: Path) -> list[dict[str, str]]:
    return [r for r in _rows(run / "splits.csv") if r["split"] == "test"]


@pytest.fixture(scope="module")
def carved(tmp_path_factory, kermany_dir) -> tuple[Path, Path]:
    """A class-folder copy of 30 + 30 kermany-224 training images (no split folders: val and test are
    carved by the seed) and a run trained on it."""
    root = tmp_path_factory.mktemp("recorded-split")
    data = root / "data"
    for cls in ("NORMAL", "PNEUMONIA"):
        (data / cls).mkdir(parents=True)
        for f in sorted((kermany_dir / "train" / cls).iterdir())[:30]:
            shutil.copy(f, data / cls / f.name)
    run = root / "run"
    run_cli("train", "--data", str(data), *FAST, "--out", str(run), check=True)
    return data, run


def _evaluate(run: Path, *args: str):
    return run_cli("evaluate", str(run), "-q", *args)


def _scored(run: Path) -> list[str]:
    return [r["path"] for r in _rows(run / "evaluation" / "predictions.csv")]


def test_splits_csv_records_the_sha256_of_every_file(carved):
    _, run = carved
    rows = _rows(run / "splits.csv")
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    for r in rows:
        assert r["sha256"] == hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest(), r["path"]


def test_added_images_do_not_move_the_test_split(carved, kermany_dir):
    data, run = carved
    recorded = [r["path"] for r in _test_rows(run)]
    trained_on = [r["path"] for r in _rows(run / "predictions.csv")]
    assert recorded == trained_on  # splits.csv's test rows are the images training scored, in its order
    added = []
    for cls in ("NORMAL", "PNEUMONIA"):
        for f in sorted((kermany_dir / "train" / cls).iterdir())[30:36]:
            added.append(data / cls / f.name)
            shutil.copy(f, added[-1])
    try:
        cfg = RunConfig.load(run / "config.yaml")
        again = discover(cfg.data.path, cfg.data.classes, seed=cfg.train.seed)
        rederived = [s.path for s in again.samples if s.split == "test"]
        assert set(rederived) != set(recorded)  # re-running discovery with the seed would move the split
        proc = _evaluate(run)
        assert proc.returncode == 0, proc.stderr
        assert _scored(run) == recorded
        metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
        assert metrics["test"]["n"] == len(recorded)
        origin = metrics["data"]["split_origin"]["test"]
        assert "splits.csv" in origin and "SHA-256 of each image verified" in origin
    finally:
        for f in added:
            f.unlink()


def test_a_changed_or_missing_test_image_is_one_line_and_allow_changed_scores_the_rest(carved, kermany_dir):
    data, run = carved
    recorded = [r["path"] for r in _test_rows(run)]
    changed, removed = Path(recorded[0]), Path(recorded[-1])
    original_changed, original_removed = changed.read_bytes(), removed.read_bytes()
    try:
        changed.write_bytes(original_changed + b"\0")  # one byte more: the same picture, other content
        line = one_line_error(_evaluate(run))
        assert str(changed) in line and "SHA-256" in line and "--allow-changed" in line
        removed.unlink()
        line = one_line_error(_evaluate(run))
        assert str(changed) in line and "and 1 more" in line

        proc = _evaluate(run, "--allow-changed")
        assert proc.returncode == 0, proc.stderr
        warning = [x for x in proc.stderr.splitlines() if "--allow-changed" in x]
        assert warning and f"scoring {len(recorded) - 2} of the {len(recorded)}" in warning[0]
        assert _scored(run) == recorded[1:-1]
        metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
        assert metrics["test"]["n"] == len(recorded) - 2
        assert "--allow-changed" in metrics["data"]["split_origin"]["test"]
        left_out = {s["path"]: s["reason"] for s in metrics["data"]["skipped"]}
        assert "SHA-256" in left_out[str(changed)] and "missing" in left_out[str(removed)]
    finally:
        changed.write_bytes(original_changed)
        removed.write_bytes(original_removed)
    assert _evaluate(run).returncode == 0  # restored: the recorded split scores again


def test_a_moved_label_is_named(carved):
    """A test image moved to the other class folder is not the recorded test image any more."""
    data, run = carved
    row = _test_rows(run)[0]
    src = Path(row["path"])
    other = "PNEUMONIA" if src.parent.name == "NORMAL" else "NORMAL"
    dst = data / other / src.name
    shutil.move(src, dst)
    try:
        line = one_line_error(_evaluate(run))
        assert str(src) in line and "missing" in line
    finally:
        shutil.move(dst, src)


def test_runs_without_hashes_are_checked_by_path_and_say_so(carved, tmp_path):
    data, run = carved
    old = tmp_path / "old-run"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("evaluation"))
    rows = _rows(old / "splits.csv")
    with (old / "splits.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["split", "class", "path", "group", "synthetic"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    proc = _evaluate(old)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((old / "evaluation" / "metrics.json").read_text())
    assert "no content hashes recorded" in metrics["data"]["split_origin"]["test"]
    assert [r["path"] for r in _rows(old / "evaluation" / "predictions.csv")] == [
        r["path"] for r in rows if r["split"] == "test"
    ]


def test_npz_rows_are_recorded_by_index_and_hash(tmp_path, pneumoniamnist_npz):
    """MedMNIST has no files: splits.csv names each row (npz:test:ROW) with the SHA-256 of its pixels."""
    npz = tmp_path / "pneumoniamnist.npz"
    shutil.copy(pneumoniamnist_npz, npz)
    run = tmp_path / "run"
    run_cli("train", "--data", str(npz), *FAST, "--image-size", "28", "--max-per-class", "60", "--out",
            str(run), check=True)  # fmt: skip
    with np.load(npz) as arrays:
        originals = {k: arrays[k] for k in arrays.files}
    test = _test_rows(run)
    assert len(test) == 120 and all(r["path"].startswith("npz:test:") for r in test)
    for r in test:
        row = int(r["path"].rsplit(":", 1)[1])
        assert r["sha256"] == hashlib.sha256(originals["test_images"][row].tobytes()).hexdigest()
    assert _evaluate(run).returncode == 0
    assert _scored(run) == [r["path"] for r in test]

    row = int(test[3]["path"].rsplit(":", 1)[1])
    edited = dict(originals)
    edited["test_images"] = originals["test_images"].copy()
    edited["test_images"][row] = 255 - edited["test_images"][row]
    np.savez(npz, **edited)
    line = one_line_error(_evaluate(run))
    assert f"npz:test:{row}" in line and "SHA-256" in line
    proc = _evaluate(run, "--allow-changed")
    assert proc.returncode == 0, proc.stderr
    assert _scored(run) == [r["path"] for r in test if r["path"] != f"npz:test:{row}"]


def test_allow_changed_is_refused_with_other_data(carved):
    data, run = carved
    line = one_line_error(_evaluate(run, "--data", str(data), "--allow-changed"))
    assert "--allow-changed" in line and "--data" in line


def test_multilabel_label_file_runs_name_a_changed_label(tmp_path, nih_labels):
    """A run on a label file (nih-1000, 15 findings by patient): its test images are the recorded ones, and
    a test image whose findings were edited in the label file since training is one line."""
    labels = tmp_path / "labels.csv"
    shutil.copy(nih_labels, labels)
    run = tmp_path / "run"
    run_cli("train", "--data", str(nih_labels.parent / "images"), "--labels", str(labels), "--labels-format",
            "nih", *FAST, "--out", str(run), check=True)  # fmt: skip
    test = _test_rows(run)
    assert _evaluate(run).returncode == 0
    assert _scored(run) == [r["path"] for r in test]
    name = Path(test[0]["path"]).name
    with labels.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        if r["Image Index"] == name:
            r["Finding Labels"] = "Hernia" if r["Finding Labels"] != "Hernia" else "No Finding"
    with labels.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    line = one_line_error(_evaluate(run))
    assert name in line and "label changed" in line


@pytest.fixture()
def nih_labels() -> Path:
    from tests.conftest import DATA, _need

    return _need(DATA / "nih-1000" / "labels.csv", "nih-1000 label file")


def test_training_and_rescoring_resample_patients(carved):
    """kermany's PNEUMONIA file names carry patient ids (personN_): the CIs of training and of `cxr evaluate`
    resample the test split's patients (NORMAL files, without an id, are each their own unit)."""
    _, run = carved
    units = len({r["group"] for r in _test_rows(run)})
    assert units < len(_test_rows(run))  # some patients have several test images
    assert _evaluate(run).returncode == 0
    for path in (run / "metrics.json", run / "evaluation" / "metrics.json"):
        test = json.loads(path.read_text())["test"]
        assert test["bootstrap_unit"] == "patient", path
        assert f"resamples of the {units} patients" in test["ci_method"], path
