"""The one Grad-CAM engine (cxrlab.explain.cam) and its method registry (cxrlab.explain.methods): every
registered method on a real trained run, pytorch-grad-cam itself as the oracle of cxrlab's heatmaps (engine,
`cxr explain` and the report), and the names every call site takes."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cxrlab.explain.methods import METHODS, list_methods
from tests.conftest import DATA, _need, run_cli
from tests.explain.conftest import REPORT_METHOD
from tests.trust.conftest import one_line_error

COVID_IEEE = DATA / "covid-ieee"


@pytest.fixture(scope="module")
def loaded(run):
    from cxrlab.evaluation.inference import load_run

    return load_run(run)


@pytest.fixture(scope="module")
def lung_pairs() -> list[tuple[Path, Path]]:
    """Four real frontal (PA) COVID-19 radiographs of covid-ieee with their lung masks (four patients)."""
    _need(COVID_IEEE, "covid-ieee dataset")
    with open(COVID_IEEE / "labels.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["view"] == "PA"]
    pairs, patients = [], set()
    for r in rows:
        image, mask = COVID_IEEE / "images" / r["filename"], COVID_IEEE / "masks" / r["filename"]
        if r["patientid"] not in patients and image.is_file() and mask.is_file():
            pairs.append((image, mask))
            patients.add(r["patientid"])
        if len(pairs) == 4:
            return pairs
    raise AssertionError("covid-ieee has fewer than 4 PA image/mask pairs")


def test_registry_names_aliases_and_classes():
    """Every entry names a real pytorch-grad-cam class and is found by its name or its class's name."""
    import pytorch_grad_cam

    from cxrlab.errors import CxrError
    from cxrlab.explain.methods import get_method

    assert list_methods()[0] == "gradcam" and len(set(list_methods())) == len(METHODS) >= 10
    for name, m in METHODS.items():
        assert m.name == name and m.cam_class() is getattr(pytorch_grad_cam, m.cls)
        assert get_method(m.cls) is m and get_method(name.upper()) is m and get_method(f" {name} ") is m
        assert m.label and m.about
    with pytest.raises(CxrError) as err:
        get_method("shap", "eval.explain_method")
    line = str(err.value)
    assert "\n" not in line and line.startswith("unknown eval.explain_method 'shap'; choose one of gradcam, ")
    assert all(name in line for name in METHODS)


@pytest.mark.parametrize("method", list_methods())
def test_every_registered_method_on_a_real_run(loaded, images, method):
    """Input-sized, finite maps in [0, 1], not all empty; a class-specific method gives each class its own
    map, a class-agnostic one the same map whatever is asked."""
    from cxrlab.data.images import load_gray
    from cxrlab.explain.cam import CamEngine

    engine = CamEngine.for_run(loaded, method)
    assert engine.method is METHODS[method] and engine.layer_name == "backbone"
    image = load_gray(images[0], 64)  # Score-CAM: one forward pass per channel (256) and map
    maps = engine(np.stack([image, image]), [0, 1])
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32 and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6 and (maps.reshape(2, -1).max(1) > 0).any()
    gap = np.abs(maps[0] - maps[1]).max()
    if METHODS[method].class_specific:
        assert gap > 1e-3, method
    else:
        assert gap == 0.0, method


#: The oracle's own mapping (not cxrlab's registry): a registry entry pointing at the wrong class fails.
ORACLE = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM",
          "xgradcam": "XGradCAM", "layercam": "LayerCAM", "eigencam": "EigenCAM"}  # fmt: skip


#: The family's default layer (the backbone's output, what the head pools: there Grad-CAM, HiResCAM and
#: XGrad-CAM coincide, the gradient being uniform over positions) and its last convolution (they differ).
LAYERS = ("backbone", "backbone.12")


def _oracle_maps(loaded, method: str, arrays: np.ndarray, target: int, layer: str) -> np.ndarray:
    """pytorch-grad-cam as its README uses it: the model as loaded (no cxrlab copy, hooks or gradient trick),
    ``layer`` found by torch's module names, ClassifierOutputTarget, the input normalised here by hand."""
    import pytorch_grad_cam
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = copy.deepcopy(loaded.model).float().eval()
    meta = loaded.meta
    mean = torch.tensor(meta["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"], dtype=torch.float32).view(1, -1, 1, 1)
    x = torch.from_numpy(arrays.astype(np.float32) / 255.0)[:, None].repeat(1, meta["channels"], 1, 1)
    x = (x - mean) / std
    target_layer = dict(model.named_modules())[layer]
    with getattr(pytorch_grad_cam, ORACLE[method])(model=model, target_layers=[target_layer]) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(target)] * len(x))


@pytest.mark.parametrize("method", list(ORACLE))
def test_heatmaps_equal_pytorch_grad_cam(run, loaded, lung_pairs, tmp_path, method):
    """On 4 real covid-ieee radiographs: cxrlab's engine equals pytorch-grad-cam's own output for the same
    layer and class (max |Δ| ≤ 1e-5; both layers, both classes), and the lung share `cxr explain --layer
    --masks` writes (the real v7labs lung masks) equals the share of the oracle's map on the same mask."""
    from cxrlab.data.images import load_gray
    from cxrlab.explain.cam import CamEngine
    from cxrlab.explain.score import lung_share

    assert loaded.meta["image_size"] == 64 and loaded.meta["resize"] == "squash"
    arrays = np.stack([load_gray(image, 64) for image, _ in lung_pairs])
    oracle = {}
    for layer in LAYERS:
        engine = CamEngine.for_run(loaded, method, layer)
        for k, name in enumerate(loaded.classes):
            oracle[name] = _oracle_maps(loaded, method, arrays, k, layer)
            assert oracle[name].shape == (4, 64, 64)
            np.testing.assert_allclose(engine(arrays, [k] * 4), oracle[name], rtol=0, atol=1e-5)
    # `cxr explain` for the class with more non-empty maps (an all-zero Grad-CAM map has no share)
    target = max(loaded.classes, key=lambda c: int((oracle[c].reshape(4, -1).max(1) > 0).sum()))
    expected = oracle[target]

    masks = tmp_path / "masks"
    masks.mkdir()
    for _, mask in lung_pairs:
        (masks / mask.name).write_bytes(mask.read_bytes())
    out = tmp_path / "explain"
    run_cli("explain", str(run), *(str(i) for i, _ in lung_pairs), "--out", str(out), "--masks", str(masks),
            "--method", method, "--class", target, "--layer", LAYERS[-1], check=True)  # fmt: skip
    scored = 0
    for (image, mask), cam in zip(lung_pairs, expected, strict=True):
        row = json.loads((out / f"{image.stem}.json").read_text())
        assert (row["method"], row["class"], row["layer"]) == (method, target, LAYERS[-1])
        assert row["mask"] == f"user: {masks / mask.name}"
        lungs = load_gray(mask, 64) > 127
        share = lung_share(np.maximum(cam, 0), lungs)
        assert row["lung_area"] == pytest.approx(lungs.mean(), abs=6e-5)
        if share is None:
            assert row["lung_share"] is None
        else:
            assert row["lung_share"] == pytest.approx(share, abs=6e-5)
            scored += 1
    assert scored >= 2


def test_the_oracle_tells_the_methods_apart(loaded, lung_pairs):
    """At the last convolution the oracle's methods give different maps, so the test above would catch a
    registry entry bound to another method's class."""
    from cxrlab.data.images import load_gray

    arrays = np.stack([load_gray(image, 64) for image, _ in lung_pairs])
    maps = {
        m: np.stack([_oracle_maps(loaded, m, arrays, k, LAYERS[-1]) for k in range(len(loaded.classes))])
        for m in ORACLE
    }
    names = list(maps)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(maps[a] - maps[b]).max() > 1e-2, (a, b)


def test_report_uses_eval_explain_method_and_equals_the_engine(run, loaded):
    """The run's report was made with eval.explain_method (not Grad-CAM): method and layer in metrics.json,
    and its overall lung share recomputed from the engine on the test images predictions.csv lists."""
    from cxrlab.data.images import load_gray
    from cxrlab.explain.cam import CamEngine, upsample
    from cxrlab.explain.lungs import Segmenter, square_gray
    from cxrlab.explain.score import lung_share

    metrics = json.loads((run / "metrics.json").read_text())
    la, gallery = metrics["lung_attention"], metrics["gallery"]
    assert la["status"] == gallery["status"] == "done"
    assert la["method"] == gallery["method"] == REPORT_METHOD and la["layer"] == "backbone"
    assert (run / "report.html").read_text().count(f"method <code>{REPORT_METHOD}</code> at layer") == 2
    with open(run / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert la["n"] == len(rows) == 8
    engine, seg = CamEngine.for_run(loaded, REPORT_METHOD), Segmenter.load()
    arrays = np.stack([load_gray(r["path"], 64) for r in rows])
    maps = engine(arrays, [loaded.classes.index(r["pred"]) for r in rows])
    lungs = seg.predict(np.stack([square_gray(a, seg.size) for a in arrays]))
    shares = [lung_share(m, upsample(p, 64) > 0.5) for m, p in zip(maps, lungs, strict=True)]
    scored = [s for s in shares if s is not None]
    assert la["overall"]["n"] == len(scored) > 0
    assert la["overall"]["lung_share"] == pytest.approx(np.mean(scored), abs=6e-5)


def test_call_sites_take_registry_names_and_refuse_others_in_one_line(run, images, tmp_path):
    """`cxr explain`, `cxr predict --explain` and `cxr serve` list every method in --help and refuse an
    unknown one in one line naming them; `predict --explain --method` gives `cxr explain`'s shares; a bad
    eval.explain_method stops `cxr train` before any image is decoded."""
    from cxrlab.runs import read_csv

    for command in (("explain",), ("predict",), ("serve",)):
        text = " ".join(run_cli(*command, "--help", check=True).stdout.split())
        assert all(name in text for name in METHODS), command
    out = str(tmp_path / "x")
    for args in (("explain", str(run), str(images[0]), "--out", out),
                 ("predict", str(run), str(images[0]), "--explain", "--out", out),
                 ("serve", str(run))):  # fmt: skip
        line = one_line_error(run_cli(*args, "--method", "shap"))
        assert "unknown --method 'shap'; choose one of gradcam, gradcam++," in line and "scorecam" in line
    assert not Path(out).exists()
    line = one_line_error(run_cli("predict", str(run), str(images[0]), "--method", "eigencam"))
    assert "--method chooses --explain's heatmap method" in line

    two = [str(images[0]), str(images[2])]
    run_cli("predict", str(run), *two, "--explain", "--method", "eigencam", "--out", out, "-q", check=True)
    run_cli("explain", str(run), *two, "--method", "eigencam", "--out", str(tmp_path / "ref"), check=True)
    got = {r["image"]: r for r in read_csv(Path(out) / "predictions.csv")}
    ref = {r["image"]: r for r in read_csv(tmp_path / "ref" / "explain.csv")}
    assert set(got) == set(ref) == set(two)
    for image in two:
        assert got[image]["lung_share"] == ref[image]["lung_share"] != ""  # eigencam: never all zero
        png = (Path(out) / got[image]["overlay"]).read_bytes()
        assert png == (tmp_path / "ref" / ref[image]["overlay"]).read_bytes()

    data = run.parent / "data"
    bad = ("train", "--data", str(data), "--model", "small_cnn", "--epochs", "1",
           "--set", "eval.explain_method=shap", "--out", str(tmp_path / "r"))  # fmt: skip
    line = one_line_error(run_cli(*bad))
    assert "unknown eval.explain_method 'shap'; choose one of gradcam" in line
