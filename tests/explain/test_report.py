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


def test_split_engine_batched_equals_per_image_and_the_whole_network(fast_run):
    """The frozen MobileNetV2 run: the engine splits at the backbone (one forward without gradients, the
    head's backward), and its batched heatmaps equal each image's own and pytorch-grad-cam's on the whole
    network (max |Δ| ≤ 1e-5)."""
    import copy

    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cxrlab.data.images import load_gray
    from cxrlab.evaluation.inference import load_run
    from cxrlab.explain.cam import CamEngine

    loaded = load_run(fast_run)
    rows = _predictions(fast_run)
    arrays = np.stack([load_gray(r["path"], 96) for r in rows])
    targets = [loaded.classes.index(r["pred"]) for r in rows]
    engine = CamEngine.for_run(loaded, "gradcam")
    assert engine.split and engine.cache is None
    batched = engine(arrays, targets)
    single = np.concatenate([engine(arrays[i : i + 1], targets[i : i + 1]) for i in range(len(arrays))])
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-5)
    # the oracle: pytorch-grad-cam on the whole loaded network (no split), its README's way
    model = copy.deepcopy(loaded.model).float().eval().requires_grad_(True)
    x = engine.tensor(arrays)
    with pytorch_grad_cam.GradCAM(model=model, target_layers=[model.backbone]) as cam:
        whole = cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    np.testing.assert_allclose(batched, whole, rtol=0, atol=1e-5)
    assert (batched.reshape(len(arrays), -1).max(1) > 0).any()


def test_a_warm_report_reads_masks_and_activations_from_the_cache(fast_run, tmp_path):
    """`cxr evaluate` of the run (same test images, same cache as its training): every lung mask and every
    frozen-backbone activation comes from cxrlab's cache, and the lung-attention numbers are the run's own;
    with an empty cache they are computed again, written there, and the numbers are the same."""
    from cxrlab.data.cache import default_cache_dir

    la = json.loads((fast_run / "metrics.json").read_text())["lung_attention"]
    n = la["cache"]["images"]
    assert n == 8
    warm = tmp_path / "warm"
    run_cli("evaluate", str(fast_run), "--out", str(warm), check=True)
    got = json.loads((warm / "metrics.json").read_text())["lung_attention"]
    assert got["cache"] == {"images": n, "activations_from_cache": n, "lung_masks_from_cache": n}
    keys = ("overall", "by_class", "warnings", "n")
    assert {k: got[k] for k in keys} == {k: la[k] for k in keys}
    assert len(list((default_cache_dir() / "lungs").rglob("*.npy"))) >= n

    empty = tmp_path / "cache"
    cold = tmp_path / "cold"
    run_cli("evaluate", str(fast_run), "--out", str(cold), env={"CXRLAB_CACHE_DIR": str(empty)}, check=True)
    fresh = json.loads((cold / "metrics.json").read_text())["lung_attention"]
    assert fresh["cache"] == {"images": n, "activations_from_cache": 0, "lung_masks_from_cache": 0}
    assert {k: fresh[k] for k in keys} == {k: la[k] for k in keys}
    assert len(list((empty / "lungs").rglob("*.npy"))) == n
    assert len(list((empty / "cam-activations").rglob("*.npy"))) == n
