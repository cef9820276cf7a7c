"""The report's "Where the model looks": a Grad-CAM gallery and the lung-attention score in metrics.json,
report.html and the external-validation report, on real covid-challenge runs (a fast-path MobileNetV2, whose
heatmaps need the full network rebuilt from the saved model), the eval.explain switch, and the MLP note."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cxrlab.config import EvalConfig
from tests.browser import check_page
from tests.conftest import run_cli
from tests.trust.conftest import copy_subset

TRAIN = ("--epochs", "1", "-q", "--no-tensorboard", "--set", "eval.tsne=false", "--set", "eval.bootstrap=200")


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory, covid_dir, torch_home) -> Path:
    """Frozen ImageNet MobileNetV2 (fast path: cached backbone features), 96 px, 1 epoch on 12 + 12 real
    covid-challenge images, 4 + 4 test images (covid vs normal)."""
    root = tmp_path_factory.mktemp("explain-report")
    data = copy_subset(covid_dir, root / "data", {"train": 12, "test": 4}, ("covid", "normal"))
    out = root / "run"
    run_cli("train", "--data", str(data), "--model", "mobilenet_v2", "--pretrained", "--freeze", "backbone",
            "--image-size", "96", *TRAIN, "--out", str(out), check=True)  # fmt: skip
    return out


def _predictions(folder: Path) -> list[dict[str, str]]:
    with open(folder / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def _check_lung_attention(la: dict, n_images: int) -> None:
    assert la["status"] == "done" and la["method"] == "gradcam" and la["layer"]
    assert la["n"] == la["of"] == n_images and la["sample"] == "all test images"
    assert la["segmenter"]["dice_heldout"] > 0.85 and la["min_share"] == 0.5
    assert sum(s["n"] + s["empty"] for s in la["by_class"].values()) == n_images
    for name, s in la["by_class"].items():
        assert name in ("covid", "normal") and 0.05 < s["lung_area"] < 0.8
        if s["n"]:
            lo, hi = s["ci95"]
            assert 0 <= lo <= s["lung_share"] <= hi <= 1 and s["low"] == (s["lung_share"] < 0.5)
    assert len(la["warnings"]) == sum(s["low"] for s in la["by_class"].values())
    overall = la["overall"]
    assert overall["n"] + overall["empty"] == n_images and overall["n"] > 0
    assert overall["ci95"][0] <= overall["lung_share"] <= overall["ci95"][1]


def test_run_report_has_gallery_and_lung_attention(fast_run):
    metrics = json.loads((fast_run / "metrics.json").read_text())
    assert metrics["fast_path"] is True
    _check_lung_attention(metrics["lung_attention"], 8)
    gallery = metrics["gallery"]
    assert gallery["status"] == "done" and [r["class"] for r in gallery["classes"]] == ["covid", "normal"]
    rows = _predictions(fast_run)
    shown = 0
    for row in gallery["classes"]:
        c = row["class"]
        for kind, hit in (("correct", True), ("wrong", False)):
            called = [r for r in rows if r["pred"] == c and (r["true"] == c) == hit]
            g = row[kind]
            assert (g is None) == (not called)
            if g is None:
                continue
            # the most confident call of its kind, as predictions.csv has it
            best = max(called, key=lambda r: float(r[f"p_{c}"]))
            assert g["image"] == best["path"] and g["predicted"] == c and (g["true"] == c) == hit
            assert g["probability"] == pytest.approx(float(best[f"p_{c}"]), abs=1e-4)
            thumb = np.asarray(Image.open(fast_run / g["thumbnail"]))
            assert thumb.shape == (160, 160, 3)
            assert np.abs(thumb[..., 0].astype(int) - thumb[..., 2]).mean() > 5  # coloured, not grey
            shown += 1
    assert shown >= 2
    page = check_page(fast_run / "report.html", "run_report")
    assert "Where the model looks" in page["headings"]
    html = (fast_run / "report.html").read_text()
    assert html.count('class="grid gallery"') == 2 and "mean lung share" in html
    assert len(re.findall(r'<img alt="(covid|normal) — (correct|wrong): p = ', html)) == shown


def test_external_report_carries_lung_attention(fast_run, kermany_dir, covid_dir, tmp_path):
    """Kermany's normal images and unseen covid-challenge COVID images as the external set."""
    ext = tmp_path / "external"
    for cls, files in (("normal", sorted((kermany_dir / "test" / "NORMAL").iterdir())[:4]),
                       ("covid", sorted((covid_dir / "test" / "covid").iterdir())[-2:])):  # fmt: skip
        (ext / cls).mkdir(parents=True)
        for f in files:
            shutil.copy(f, ext / cls / f.name)
    out = tmp_path / "eval"
    run_cli("evaluate", str(fast_run), "--data", str(ext), "--out", str(out), check=True)
    ext_metrics = json.loads((out / "metrics.json").read_text())
    _check_lung_attention(ext_metrics["lung_attention"], 6)
    external = json.loads((out / "external.json").read_text())
    la = external["lung_attention"]
    assert la["status"] == "done" and la["external_sample"] == "all test images"
    overall = la["rows"][-1]
    internal = json.loads((fast_run / "metrics.json").read_text())["lung_attention"]["overall"]
    assert overall["metric"] == "all images: lung share" and overall["n_internal"] == internal["n"]
    assert overall["n_external"] == ext_metrics["lung_attention"]["overall"]["n"] > 0
    assert overall["external_ci95"][0] <= overall["external"] <= overall["external_ci95"][1]
    assert overall["drop"] == pytest.approx(overall["internal"] - overall["external"], abs=1e-3)
    assert all(s in external["summary"] for s in la["sentences"] + la["warnings"])
    page = check_page(out / "external.html", "external")
    assert "Lung attention" in page["headings"]
    assert "all images: lung share" in (out / "external.html").read_text()
    check_page(out / "report.html", "eval_report")
    assert 'class="grid gallery"' in (out / "report.html").read_text()


def test_switch_off(fast_run, tmp_path):
    """eval.explain=off in the run's config: no gallery, no score, no thumbnails, a note in the report."""
    run = tmp_path / "run"
    shutil.copytree(fast_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["eval"]["explain"] = "off"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    run_cli("evaluate", str(run), check=True)
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert metrics["gallery"] == metrics["lung_attention"] == {
        "status": "off", "note": "turned off (eval.explain=off)"
    }  # fmt: skip
    assert not (run / "evaluation" / "plots" / "gallery").exists()
    html = (run / "evaluation" / "report.html").read_text()
    assert "Gallery: turned off (eval.explain=off)." in html and "<h3>Gallery</h3>" not in html
    with pytest.raises(ValueError, match="Input should be 'auto' or 'off'"):
        EvalConfig(explain="maybe")


def test_mlp_run_gets_a_note_not_a_crash(covid_dir, tmp_path):
    data = copy_subset(covid_dir, tmp_path / "data", {"train": 6, "test": 3}, ("covid", "normal"))
    out = tmp_path / "run"
    run_cli("train", "--data", str(data), "--model", "mlp", *TRAIN, "--out", str(out), check=True)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("gallery", "lung_attention"):
        assert metrics[key]["status"] == "skipped"
        assert metrics[key]["note"].startswith("no Grad-CAM target layer: mlp has no convolutional layer")
    check_page(out / "report.html", "run_report")
    assert "Gallery: no Grad-CAM target layer" in (out / "report.html").read_text()
