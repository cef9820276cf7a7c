"""--extra-train: synthetic images join the training split only; runs record real vs synthetic."""

from __future__ import annotations

import csv
import json

from cxrlab.config import DataConfig
from cxrlab.data.prepare import prepare_data
from tests.generative.conftest import train_small_cnn


def _splits(prepared) -> dict[str, set[str]]:
    return {split: {s.path for s in prepared.index.split(split)} for split in ("train", "val", "test")}


def test_synthetic_images_never_reach_val_or_test(flat_kermany, synth_dir):
    # No val/ or test/ folder: both are carved from the real images *before* the synthetic ones are
    # added (prepare_data: discover() carves, then add_extra_train), and the carve skips synthetic ones.
    plain = prepare_data(DataConfig(path=str(flat_kermany)), 32, seed=0, progress=False)
    mixed = prepare_data(
        DataConfig(path=str(flat_kermany), extra_train=str(synth_dir)), 32, 0, progress=False
    )
    synthetic = {s.path for s in mixed.index.samples if s.synthetic}
    assert len(synthetic) == 30 and all(str(synth_dir) in p for p in synthetic)
    a, b = _splits(plain), _splits(mixed)
    assert a["val"] == b["val"] and a["test"] == b["test"]  # carving is unaffected
    assert not synthetic & (b["val"] | b["test"])
    assert b["train"] == a["train"] | synthetic
    assert mixed.index.synthetic_counts() == {"NORMAL": 30, "PNEUMONIA": 0}
    assert len(mixed.images["train"]) == len(plain.images["train"]) + 30


def test_run_records_real_and_synthetic_per_class(tiny_kermany, synth_dir, tmp_path):
    out = tmp_path / "aug"
    proc = train_small_cnn(tiny_kermany, out, "--extra-train", str(synth_dir))
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "metrics.json").read_text())["data"]
    assert data["real_train"] == {"NORMAL": 24, "PNEUMONIA": 24}
    assert data["synthetic_train"] == {"NORMAL": 30, "PNEUMONIA": 0}
    assert data["counts"]["train"] == {"NORMAL": 54, "PNEUMONIA": 24}
    assert data["counts"]["val"] == {"NORMAL": 8, "PNEUMONIA": 8}
    assert data["counts"]["test"] == {"NORMAL": 12, "PNEUMONIA": 12}
    rows = list(csv.DictReader((out / "splits.csv").open()))
    assert {r["split"] for r in rows if r["synthetic"] == "1"} == {"train"}
    predicted = {r["path"] for r in csv.DictReader((out / "predictions.csv").open())}
    assert len(predicted) == 24 and not any(str(synth_dir) in p for p in predicted)
    assert (out / "plots" / "synthetic.png").is_file()
    report = (out / "report.html").read_text()
    assert "real + synthetic" in report and "NORMAL 24 + 30" in report
