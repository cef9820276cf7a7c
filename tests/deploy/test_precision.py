"""fp32 inference on every CPU (issue 27, item 4): `cxr predict`, `cxr serve` and the ONNX export run by
onnxruntime give the same probabilities on a CPU with native bf16 and on one without (the detection forced
with CXRLAB_CPU_BF16), and a run's scores in metrics.json do not depend on it either."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxrlab.data.images import load_gray
from cxrlab.evaluation.inference import load_run, predict_arrays
from cxrlab.runs import read_csv
from cxrlab.runtime import CPU_BF16_ENV, inference_dtype
from tests.conftest import run_cli
from tests.deploy.test_serve import Server

N_IMAGES = 50
TOLERANCE = 1e-4


def _p_covid(rows: list[dict]) -> dict[str, float]:
    return {r["image"]: r["probabilities"]["covid"] for r in rows}


@pytest.fixture(scope="module")
def images(test_images):
    assert len(test_images) >= N_IMAGES
    return test_images[:N_IMAGES]


@pytest.fixture(scope="module")
def onnx_probs(small_run, images, tmp_path_factory) -> dict[str, float]:
    """P(covid) of the run's ONNX export, run by onnxruntime itself on the documented input."""
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    run_cli("export", str(small_run), "--format", "onnx", "--out", str(path), check=True)
    x = np.stack([load_gray(p, 64, "squash") for p in images]).astype(np.float32)[:, None] / 255.0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (probs,) = session.run(None, {"image": x})
    classes = json.loads((small_run / "model.json").read_text())["classes"]
    return {str(p): float(row[classes.index("covid")]) for p, row in zip(images, probs, strict=True)}


@pytest.fixture(scope="module")
def servers(small_run):
    """`cxr serve` twice, as on a CPU with native bf16 (1) and as on one without (0)."""
    started = {flag: Server(small_run, env={CPU_BF16_ENV: flag}) for flag in ("1", "0")}
    try:
        yield {flag: s.wait() for flag, s in started.items()}
    finally:
        for s in started.values():
            s.stop()


def _largest_gap(a: dict[str, float], b: dict[str, float]) -> float:
    assert a.keys() == b.keys()
    return max(abs(a[k] - b[k]) for k in a)


@pytest.mark.parametrize("native_bf16", ["1", "0"])
def test_predict_serve_and_onnx_agree_on_both_cpu_paths(native_bf16, small_run, images, onnx_probs,
                                                        servers, monkeypatch):  # fmt: skip
    monkeypatch.setenv(CPU_BF16_ENV, native_bf16)
    # the forced detection reaches training's choice and any inference that asks for bf16 ...
    assert (inference_dtype("auto", "cpu") is torch.bfloat16) == (native_bf16 == "1")
    proc = run_cli("predict", str(small_run), *map(str, images), "--json", check=True)
    predicted = _p_covid(json.loads(proc.stdout))
    served = {}
    for image in images:
        status, body, _ = servers[native_bf16].upload(image.name, image.read_bytes())
        assert status == 200, body
        served[str(image)] = body["probabilities"]["covid"]
    # ... but the default eval.precision (32) computes in fp32 on both paths: one set of probabilities
    assert _largest_gap(predicted, onnx_probs) < TOLERANCE
    assert _largest_gap(served, onnx_probs) < TOLERANCE
    assert _largest_gap(served, predicted) < TOLERANCE


def test_bf16_inference_is_what_the_tolerance_would_catch(small_run, images, onnx_probs, monkeypatch):
    """The agreement above is not a tolerance too loose to see bf16: asked for (eval.precision), bf16
    autocast moves these probabilities by more than 1e-4."""
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    loaded = load_run(small_run)
    loaded.cfg.eval.precision = "auto"
    arrays = np.stack([load_gray(p, 64, "squash") for p in images])
    probs, _ = predict_arrays(loaded, arrays)
    covid = loaded.classes.index("covid")
    bf16 = {str(p): float(row[covid]) for p, row in zip(images, probs, strict=True)}
    assert _largest_gap(bf16, onnx_probs) > TOLERANCE


def test_a_runs_test_scores_do_not_depend_on_the_cpu(covid_dir, torch_home, tmp_path):
    """Trained as on a CPU with native bf16 (train.precision auto: bf16 backbone features on the fast
    path), the test probabilities in predictions.csv / metrics.json are fp32 ones: those of `cxr predict`
    on a CPU without native bf16, and of `cxr evaluate` on either."""
    out = tmp_path / "run"
    env = {CPU_BF16_ENV: "1", "TORCH_HOME": str(torch_home.parents[2])}
    run_cli(
        "train", "--data", str(covid_dir), "--classes", "covid,normal", "--model", "mobilenet_v2",
        "--pretrained", "--freeze", "backbone", "--image-size", "64", "--epochs", "2", "--out", str(out),
        "-q", "--no-tensorboard", "--set", "eval.tsne=false", "--set", "eval.bootstrap=0",
        "--set", "eval.explain=off", env=env, check=True,
    )  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fast_path"] and "eval_inputs_s" in metrics["timing"]  # test features again, in fp32
    trained = {r["path"]: float(r["p_covid"]) for r in read_csv(out / "predictions.csv")}
    proc = run_cli("predict", str(out), *trained, "--json", env={CPU_BF16_ENV: "0"}, check=True)
    assert _largest_gap(trained, _p_covid(json.loads(proc.stdout))) < TOLERANCE
    for flag in ("1", "0"):
        folder = tmp_path / f"eval{flag}"
        run_cli("evaluate", str(out), "--out", str(folder), env={CPU_BF16_ENV: flag}, check=True)
        again = {r["path"]: float(r["p_covid"]) for r in read_csv(folder / "predictions.csv")}
        assert _largest_gap(trained, again) < TOLERANCE
