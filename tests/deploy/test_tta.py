"""A run with test-time shift averaging (eval.tta_shift): evaluation, `cxr predict`, `cxr evaluate`, the
service's predictor and the ONNX export all average the same five views (real images, real training)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrlab.data.prepare import to_tensor
from cxrlab.evaluation.evaluate import logits_to_probs
from cxrlab.models.tta import shifted_views
from tests.conftest import run_cli
from tests.deploy.conftest import TRAIN_ARGS
from tests.deploy.test_export import _inputs
from tests.trust.conftest import one_line_error

SHIFT = 4  # 0.0625 of 64 px


@pytest.fixture(scope="module")
def tta_run(tmp_path_factory, covid_dir) -> Path:
    out = tmp_path_factory.mktemp("tta") / "run"
    run_cli(
        "train", "--data", str(covid_dir), *TRAIN_ARGS, "--out", str(out), "--set", "eval.tta_shift=0.0625",
        check=True,
    )  # fmt: skip
    return out


def _by_hand(run: Path, images: list[Path]) -> np.ndarray:
    """Probabilities from the plain network, the five views' logits averaged here (no cxrlab TTA code)."""
    from cxrlab.evaluation.inference import load_run

    loaded = load_run(run)
    meta = loaded.meta
    arrays = (_inputs(images)[:, 0] * 255).round().astype(np.uint8)
    x = to_tensor(arrays, meta["channels"], tuple(meta["mean"]), tuple(meta["std"]))
    with torch.no_grad():
        logits = torch.stack([loaded.model(v) for v in shifted_views(x, SHIFT)]).mean(0)
    return logits_to_probs(logits.numpy(), meta.get("temperature", 1.0))


def test_the_run_records_the_shift_and_predict_averages_the_views(tta_run, test_images):
    meta = json.loads((tta_run / "model.json").read_text())
    assert meta["tta_shift_px"] == SHIFT
    assert json.loads((tta_run / "metrics.json").read_text())["test_time_shift_px"] == SHIFT
    assert "four copies shifted by 4 px" in (tta_run / "report.html").read_text()
    images = test_images[:12]
    proc = run_cli("predict", str(tta_run), *map(str, images), "--json", check=True)
    got = np.array([[r["probabilities"][c] for c in meta["classes"]] for r in json.loads(proc.stdout)])
    np.testing.assert_allclose(got, _by_hand(tta_run, images), atol=1e-5)


def test_cxr_evaluate_scores_what_training_scored(tta_run):
    trained = json.loads((tta_run / "metrics.json").read_text())["test"]
    run_cli("evaluate", str(tta_run), check=True)
    again = json.loads((tta_run / "evaluation" / "metrics.json").read_text())["test"]
    assert again["auc"] == pytest.approx(trained["auc"], abs=1e-6)
    assert again["accuracy"] == pytest.approx(trained["accuracy"])


def test_onnx_export_carries_the_averaging_inside_the_graph(tta_run, test_images, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "model.onnx"
    run_cli("export", str(tta_run), "--format", "onnx", "--out", str(out), check=True)
    from cxrlab.deploy.export import read_metadata

    info = read_metadata(out)
    assert info["input"]["test_time_shift_px"] == SHIFT
    assert "shifted by 4 px" in info["input"]["test_time_augmentation"]
    images = test_images[:12]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probs = session.run(None, {"image": _inputs(images)})[0]
    np.testing.assert_allclose(probs, _by_hand(tta_run, images), atol=1e-4)


def test_the_service_predictor_averages_the_views(tta_run, test_images):
    from cxrlab.deploy.serve import Predictor
    from cxrlab.evaluation.inference import load_run

    images = test_images[:6]
    arrays = (_inputs(images)[:, 0] * 255).round().astype(np.uint8)
    predictor = Predictor(load_run(tta_run))
    np.testing.assert_allclose(predictor.probabilities(arrays), _by_hand(tta_run, images), atol=1e-5)


def test_an_edited_shift_in_model_json_is_one_line(tta_run, test_images, tmp_path):
    copy = tmp_path / "edited"
    shutil.copytree(tta_run, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["tta_shift_px"] = 40
    (copy / "model.json").write_text(json.dumps(meta))
    line = one_line_error(run_cli("predict", str(copy), str(test_images[0])))
    assert "tta_shift_px" in line and "quarter" in line


@pytest.mark.parametrize("freeze", ["backbone", "blocks:14"])
def test_cached_feature_paths_score_the_whole_network_on_shifted_images(freeze, covid_dir, torch_home,
                                                                        tmp_path):  # fmt: skip
    """The frozen fast path and partial fine-tuning train on cached features; with a shift the evaluation
    runs the saved network on the images instead, and `cxr evaluate` (images only) agrees with it."""
    out = tmp_path / "run"
    run_cli(
        "train", "--data", str(covid_dir), "--classes", "covid,normal", "--model", "mobilenet_v2",
        "--pretrained", "--freeze", freeze, "--image-size", "64", "--epochs", "2", "--out", str(out), "-q",
        "--no-tensorboard", "--set", "eval.tsne=false", "--set", "eval.bootstrap=0",
        "--set", "train.precision=32", "--set", "eval.tta_shift=0.0625", "--set", "eval.explain=off",
        check=True,
    )  # fmt: skip
    trained = json.loads((out / "metrics.json").read_text())
    assert trained["test_time_shift_px"] == SHIFT and trained["fast_path"] == (freeze == "backbone")
    run_cli("evaluate", str(out), check=True)
    again = json.loads((out / "evaluation" / "metrics.json").read_text())["test"]
    assert again["auc"] == pytest.approx(trained["test"]["auc"], abs=1e-6)
    assert again["accuracy"] == pytest.approx(trained["test"]["accuracy"])
