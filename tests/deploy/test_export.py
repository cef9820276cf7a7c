"""`cxr export`: ONNX and TorchScript files with the run's contract, checked on real test images."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest

from cxrlab.data.images import load_gray
from tests.conftest import run_cli
from tests.trust.conftest import one_line_error

PARITY_LINE = re.compile(r"parity on 32 test images: max \|Δp\| = ([0-9.e+-]+) \(limit 0\.0001\)")


@pytest.fixture(scope="module")
def reference(small_run, test_images):
    """cxrlab's own probabilities (`cxr predict --json`) for 32 real test images, both classes."""
    images = test_images[:32]
    proc = run_cli("predict", str(small_run), *map(str, images), "--json", check=True)
    return images, json.loads(proc.stdout)


def _contract_matches_run(info: dict, run) -> None:
    meta = json.loads((run / "model.json").read_text())
    assert info["classes"] == meta["classes"] == ["covid", "normal"]
    assert info["input"]["image_size"] == 64 and info["input"]["shape"] == ["N", 1, 64, 64]
    assert info["input"]["channels"] == meta["channels"]
    assert info["input"]["mean"] == meta["mean"] and info["input"]["std"] == meta["std"]
    assert info["input"]["resize"] == meta["resize"]
    assert info["temperature"] == meta["temperature"]
    assert info["operating_point"]["threshold"] == meta["operating_point"]["threshold"]
    assert info["operating_point"]["positive_class"] == "covid"
    assert re.fullmatch(r"run@[0-9a-f]{12}", info["run_id"])
    assert info["cxrlab_version"]


def _inputs(images) -> np.ndarray:
    """The documented input: grey 64x64 (squash), /255, shape (N, 1, 64, 64) float32."""
    return np.stack([load_gray(p, 64, "squash") for p in images]).astype(np.float32)[:, None] / 255.0


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_parity_and_metadata_round_trip(fmt, small_run, reference, tmp_path):
    out = tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt")
    proc = run_cli("export", str(small_run), "--format", fmt, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    match = PARITY_LINE.search(proc.stdout)
    assert match and float(match.group(1)) <= 1e-4, proc.stdout
    assert f"wrote {out}" in proc.stdout

    from cxrlab.deploy.export import read_metadata

    info = read_metadata(out)
    _contract_matches_run(info, small_run)
    if fmt == "onnx":
        import onnx
        import onnxruntime as ort

        props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert json.loads(props["classes"]) == ["covid", "normal"] and props["input_size"] == "64"
        assert float(props["threshold"]) == info["operating_point"]["threshold"]
        assert json.loads(props["cxrlab"]) == info
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        run = lambda x: session.run(None, {"image": x})[0]  # noqa: E731
    else:
        import torch

        names = zipfile.ZipFile(out).namelist()
        assert any(n.endswith("/extra/cxrlab.json") for n in names)
        module = torch.jit.load(str(out))
        run = lambda x: module(torch.from_numpy(x)).detach().numpy()  # noqa: E731

    # independent of the printed check: the file, fed by the documented contract, agrees with `cxr predict`
    images, expected = reference
    got = run(_inputs(images))
    want = np.array([[r["probabilities"][c] for c in ("covid", "normal")] for r in expected])
    assert got.shape == (32, 2)
    assert np.abs(got - want).max() <= 1e-4  # predict rounds to 6 digits
    assert np.allclose(got.sum(axis=1), 1, atol=1e-5)


def test_export_refusals(small_run, tmp_path):
    existing = tmp_path / "taken.onnx"
    existing.write_text("keep me")
    line = one_line_error(run_cli("export", str(small_run), "--out", str(existing)))
    assert "already exists" in line and existing.read_text() == "keep me"
    line = one_line_error(
        run_cli("export", str(small_run), "--format", "tflite", "--out", str(tmp_path / "m"))
    )
    assert "--format 'tflite': choose onnx or torchscript" in line
    # a parity check that fails (here: a zero tolerance) writes nothing
    strict = tmp_path / "strict.onnx"
    line = one_line_error(run_cli("export", str(small_run), "--out", str(strict), "--tolerance", "0"))
    assert "parity check failed" in line and "nothing was written" in line and not strict.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".strict")]


def _copy_run(small_run, dest):
    import shutil

    shutil.copytree(small_run, dest, ignore=shutil.ignore_patterns(".cxrlab-lock"))
    return dest


def _predicted(run, images) -> dict[str, list[float]]:
    proc = run_cli("predict", str(run), *map(str, images), "--json", check=True)
    return {r["image"]: [r["probabilities"][c] for c in ("covid", "normal")] for r in json.loads(proc.stdout)}


def test_parity_is_the_largest_difference_and_honours_the_temperature(small_run, tmp_path):
    """A run with a temperature of 2: its export passes parity only if the graph and cxrlab's reference both
    divide the logits by 2; checked against the run at temperature 1, the parity number is the largest
    |Δp| over the 32 images, as `cxr predict` of the two runs gives it."""
    from cxrlab.deploy.export import export_run, parity
    from cxrlab.evaluation.inference import image_run

    warm = _copy_run(small_run, tmp_path / "warm")
    meta = json.loads((warm / "model.json").read_text())
    assert meta["temperature"] == 1.0
    meta["temperature"] = 2.0
    (warm / "model.json").write_text(json.dumps(meta))
    out = tmp_path / "warm.onnx"
    info = export_run(warm, "onnx", out)
    assert info["temperature"] == 2.0 and info["parity"]["max_abs_diff"] <= 1e-4
    check = parity(image_run(small_run), out.read_bytes(), "onnx")
    cold, hot = _predicted(small_run, check["images"]), _predicted(warm, check["images"])
    diffs = np.array([np.abs(np.subtract(cold[p], hot[p])).max() for p in check["images"]])
    assert check["n"] == len(diffs) == 32 and diffs.max() > 1e-3
    assert check["max_abs_diff"] == pytest.approx(diffs.max(), abs=1e-5)  # predict rounds to 6 digits
    assert diffs.max() - diffs.mean() > 1e-3  # the largest, which a mean would hide


def test_a_nan_parity_difference_refuses_the_export(small_run, tmp_path):
    """A model whose output is NaN (a damaged weight) differs from nothing by less than the tolerance: NaN
    fails the check, and nothing is written."""
    from safetensors.torch import load_file, save_file

    broken = _copy_run(small_run, tmp_path / "broken")
    state = load_file(broken / "model.safetensors")
    key = next(k for k in state if k.endswith("out.bias"))
    state[key] = state[key] * float("nan")
    save_file(state, broken / "model.safetensors")
    out = tmp_path / "nan.onnx"
    line = one_line_error(run_cli("export", str(broken), "--out", str(out)))
    assert "parity check failed" in line and "by nan" in line and "nothing was written" in line
    assert not out.exists()
