"""The out-of-distribution guard (cxrlab.evaluation.ood) on real runs and real images: fitted at train time
into the run folder without pickle, scored as scikit-learn's LedoitWolf does, own test images kept, pydicom's
CT/MR files and a lateral header flagged with their reasons, an old run "not assessed", and the verdict in
every result of `cxr predict`, `cxrlab.predict` and `cxr serve`."""

from __future__ import annotations

import csv
import http.client
import json
import shutil
import socket
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DATA, run_cli
from tests.trust.conftest import copy_subset

FAST = ("--model", "mobilenet_v2", "--pretrained", "--freeze", "backbone", "--epochs", "3")
QUIET = ("-q", "--no-tensorboard", "--set", "eval.tsne=false", "--set", "eval.bootstrap=50",
         "--set", "eval.explain=off")  # fmt: skip


@pytest.fixture(scope="module")
def ood_data(tmp_path_factory, covid_dir) -> Path:
    """covid-challenge covid + normal, train 24/class, test 10/class (real images)."""
    root = tmp_path_factory.mktemp("ood-data") / "covid"
    return copy_subset(covid_dir, root, {"train": 24, "test": 10}, ("covid", "normal"))


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory, ood_data, torch_home) -> Path:
    """A fast-path run (frozen ImageNet MobileNetV2): the guard is fitted on its cached features."""
    out = tmp_path_factory.mktemp("ood-runs") / "fast"
    run_cli("train", "--data", str(ood_data), *FAST, *QUIET, "--out", str(out), check=True)
    return out


def _test_paths(run: Path) -> list[str]:
    with open(run / "splits.csv", encoding="utf-8", newline="") as fh:
        return [r["path"] for r in csv.DictReader(fh) if r["split"] == "test"]


def _pydicom_file(name: str) -> str:
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom's test file {name} is not installed")
    return str(path)


def test_guard_written_without_pickle_and_its_fields(fast_run):
    from cxrlab.evaluation.ood import GUARD_JSON, GUARD_NPZ, OodGuard

    info = json.loads((fast_run / GUARD_JSON).read_text())
    with np.load(fast_run / GUARD_NPZ, allow_pickle=False) as z:
        assert set(z.files) == {"mean", "precision"}
        d = z["mean"].shape[0]
        assert z["precision"].shape == (d, d)
    assert d == 1280  # MobileNetV2's pooled features: the head has no hidden layer
    assert info["method"] == "mahalanobis-ledoit-wolf" and info["percentile"] == 95
    assert info["feature_dim"] == d and info["reused_cached_features"] is True
    n_val = info["val_images"]
    assert info["fit_images"] + n_val == 48 and info["test_images"] == 20
    assert 0.9 <= info["val_kept_share"] <= 1.0 and len(info["acquisition_checks"]) == 3
    guard = OodGuard.load(fast_run)
    assert guard is not None and guard.threshold == pytest.approx(info["threshold"])


def test_scores_are_sklearns_ledoit_wolf_mahalanobis_and_threshold_the_95th_percentile(fast_run):
    """Oracle: the guard's distance squared is sklearn's LedoitWolf().mahalanobis on the same features;
    the threshold is numpy's 95th percentile of the validation distances."""
    from sklearn.covariance import LedoitWolf

    from cxrlab.data.images import load_gray
    from cxrlab.evaluation.inference import load_run
    from cxrlab.evaluation.ood import features, fit

    loaded = load_run(fast_run)
    size = loaded.meta["image_size"]
    with open(fast_run / "splits.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    feats = {sp: features(loaded, np.stack([load_gray(r["path"], size) for r in rows if r["split"] == sp]))
             for sp in ("train", "val", "test")}  # fmt: skip
    guard, val_scores = fit(feats["train"], feats["val"])
    lw = LedoitWolf().fit(feats["train"].astype(np.float64))
    np.testing.assert_allclose(guard.score(feats["test"]) ** 2, lw.mahalanobis(feats["test"]), rtol=1e-4)
    assert guard.threshold == pytest.approx(
        np.percentile(np.sqrt(lw.mahalanobis(feats["val"])), 95), rel=1e-4
    )
    assert np.mean(val_scores <= guard.threshold) >= 0.9


def test_predict_carries_the_verdict_and_keeps_most_own_test_images(fast_run):
    import cxrlab
    from cxrlab.evaluation.ood import GUARD_JSON

    results = cxrlab.predict(fast_run, _test_paths(fast_run))
    assert len(results) == 20
    for r in results:
        ood = r["ood"]
        assert set(ood) == {"in_distribution", "score", "threshold", "reasons"}
        assert isinstance(ood["in_distribution"], bool) and ood["score"] > 0
        assert ood["in_distribution"] == (ood["score"] <= ood["threshold"]) == (not ood["reasons"])
    kept = np.mean([r["ood"]["in_distribution"] for r in results])
    assert kept >= 0.75, [r["ood"] for r in results]
    # what training recorded for its test split is what predict finds (the same features, one image at most
    # on the other side of the threshold from fp32 rounding between the cached and the predict pass)
    recorded = json.loads((fast_run / GUARD_JSON).read_text())["test_kept_share"]
    assert abs(kept - recorded) <= 1 / 20 + 1e-9


def test_pydicom_ct_and_mr_files_are_flagged_with_the_reason(fast_run):
    import cxrlab

    files = [_pydicom_file("CT_small.dcm"), _pydicom_file("MR_small.dcm")]
    results = cxrlab.predict(fast_run, files)
    for r, modality in zip(results, ("CT", "MR"), strict=True):
        ood = r["ood"]
        assert ood["in_distribution"] is False, r
        assert any(f"modality '{modality}'" in why for why in ood["reasons"]), ood["reasons"]
        # the features alone flag them too: far outside the training images
        assert ood["score"] > ood["threshold"], ood


def test_a_lateral_view_header_is_flagged(fast_run, tmp_path):
    """A real chest DICOM (RSNA, AP) with its ViewPosition set to LL: the same pixels, now flagged."""
    pydicom = pytest.importorskip("pydicom")
    import cxrlab

    src = next(p for p in sorted((DATA / "dicom").glob("*.dcm")) if p.name.startswith("rsna_"))
    ds = pydicom.dcmread(src)
    ds.ViewPosition = "LL"
    lateral = tmp_path / "lateral.dcm"
    ds.save_as(lateral)
    frontal, side = cxrlab.predict(fast_run, [str(src), str(lateral)])
    assert not any("lateral" in why for why in frontal["ood"]["reasons"])
    assert side["ood"]["in_distribution"] is False
    assert any("lateral view (view_position 'LL')" in why for why in side["ood"]["reasons"])
    assert side["ood"]["score"] == pytest.approx(frontal["ood"]["score"])  # same pixels, same score


def test_acquisition_checks_read_headers_and_label_file_views():
    pydicom = pytest.importorskip("pydicom")
    from cxrlab.evaluation.ood import acquisition_reasons

    assert acquisition_reasons(None) == []
    assert acquisition_reasons({"view": "PA"}) == [] and acquisition_reasons({"View Position": "AP"}) == []
    assert "lateral" in acquisition_reasons({"view": "L"})[0]  # covid-ieee's labels.csv
    assert "lateral" in acquisition_reasons({"Frontal/Lateral": "Lateral"})[0]  # CheXpert's column
    assert acquisition_reasons({"Modality": "CR", "BodyPartExamined": "CHEST", "ViewPosition": "PA"}) == []
    assert "body part 'SKULL'" in acquisition_reasons({"BodyPartExamined": "SKULL"})[0]
    ds = pydicom.dcmread(_pydicom_file("CT_small.dcm"), stop_before_pixels=True)
    assert any("modality 'CT'" in why for why in acquisition_reasons(ds))


def test_an_old_run_without_a_guard_says_not_assessed(fast_run, tmp_path):
    import cxrlab
    from cxrlab.evaluation.ood import GUARD_JSON, GUARD_NPZ, OodGuard

    old = tmp_path / "old"
    shutil.copytree(fast_run, old)
    (old / GUARD_JSON).unlink()
    (old / GUARD_NPZ).unlink()
    assert OodGuard.load(old) is None
    image, ct = cxrlab.predict(old, [_test_paths(fast_run)[0], _pydicom_file("CT_small.dcm")])
    assert image["ood"]["in_distribution"] is None and image["ood"]["score"] is None
    assert image["ood"]["reasons"][0].startswith("not assessed")
    assert ct["ood"]["in_distribution"] is False  # the header alone still objects
    assert any("modality 'CT'" in why for why in ct["ood"]["reasons"])


def test_a_damaged_guard_is_one_line(fast_run, tmp_path):
    from cxrlab.errors import ModelError
    from cxrlab.evaluation.ood import GUARD_NPZ, OodGuard

    bad = tmp_path / "bad"
    shutil.copytree(fast_run, bad)
    (bad / GUARD_NPZ).write_bytes(b"not an npz")
    with pytest.raises(ModelError, match="OOD guard .* is damaged"):
        OodGuard.load(bad)
    proc = run_cli("predict", str(bad), _test_paths(fast_run)[0])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "is damaged" in proc.stderr.strip().splitlines()[-1]


def test_full_training_run_fits_its_guard_from_the_model(tmp_path, ood_data):
    """A small CNN trained whole (no cached features): the guard is computed with the saved model, and
    `cxr predict --json` carries it."""
    from cxrlab.evaluation.ood import GUARD_JSON

    out = tmp_path / "cnn"
    run_cli("train", "--data", str(ood_data), "--model", "small_cnn", "--image-size", "64", "--epochs", "1",
            *QUIET, "--out", str(out), check=True)  # fmt: skip
    info = json.loads((out / GUARD_JSON).read_text())
    assert info["reused_cached_features"] is False and info["fit_images"] > 10
    proc = run_cli("predict", str(out), *_test_paths(out)[:3], "--json", check=True)
    results = json.loads(proc.stdout)
    assert all(isinstance(r["ood"]["in_distribution"], bool) for r in results)
    assert all(r["ood"]["threshold"] == pytest.approx(info["threshold"], abs=1e-4) for r in results)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _upload(port: int, name: str, data: bytes) -> dict:
    b = uuid.uuid4().hex
    head = f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'.encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/v1/predict", head + data + f"\r\n--{b}--\r\n".encode(),
                     {"Content-Type": f"multipart/form-data; boundary={b}"})  # fmt: skip
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        return json.loads(resp.read())
    finally:
        conn.close()


def test_serve_answers_with_the_verdict(fast_run):
    """A real `cxr serve` process: a real test radiograph and pydicom's CT file, each answer with the guard's
    verdict (top-level ``in_distribution`` and ``ood``), the same as `cxrlab.predict`'s."""
    pytest.importorskip("fastapi")
    import cxrlab

    image, ct = _test_paths(fast_run)[0], _pydicom_file("CT_small.dcm")
    port = _free_port()
    cmd = [sys.executable, "-m", "cxrlab", "serve", str(fast_run), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 240
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                assert time.monotonic() < end, "server did not start"
                time.sleep(0.5)
        answers = [_upload(port, Path(p).name, Path(p).read_bytes()) for p in (image, ct)]
        page = _page_verdicts(port, [image, ct])
    finally:
        proc.terminate()
        proc.wait(30)
    expected = cxrlab.predict(fast_run, [image, ct])
    for got, want in zip(answers, expected, strict=True):
        assert got["in_distribution"] == got["ood"]["in_distribution"] == want["ood"]["in_distribution"]
        assert got["ood"]["score"] == pytest.approx(want["ood"]["score"], rel=1e-3)
        assert got["ood"]["threshold"] == want["ood"]["threshold"]
    assert answers[1]["in_distribution"] is False
    assert any("modality 'CT'" in why for why in answers[1]["ood"]["reasons"])
    # the page: the in-distribution image's class; for the CT file the words instead of a class
    assert page[0]["decision"] == "→ " + answers[0]["class"] and "within what" in page[0]["ood"]
    assert page[1]["decision"] == "outside what this model was validated on"
    assert "modality 'CT'" in page[1]["ood"] and "do not apply" in page[1]["ood"]


def _page_verdicts(port: int, files: list[str]) -> list[dict]:
    """The service page in headless Chromium: each file chosen in turn, the decision and verdict lines."""
    from tests.browser import chromium, chromium_page, page_errors

    if chromium() is None:
        pytest.skip(
            "chromium is not installed (CI installs it in .ci/run; locally: apt-get install chromium)"
        )
    seen = []
    with chromium_page(("Page", "Runtime", "Log", "DOM"), timeout=60) as cdp:
        cdp.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
        cdp.wait_for("Page.loadEventFired", 60)

        def js(expr: str):
            return cdp.call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")

        for file in files:
            js("document.getElementById('status').textContent = ''")
            root = cdp.call("DOM.getDocument")["root"]["nodeId"]
            node = cdp.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
            cdp.call("DOM.setFileInputFiles", files=[file], nodeId=node)
            end = time.monotonic() + 120
            while not (js("document.getElementById('status').textContent") or "").startswith("done"):
                assert time.monotonic() < end, js("document.getElementById('status').textContent")
                time.sleep(0.3)
            seen.append({k: js(f"document.getElementById('{k}').textContent") for k in ("decision", "ood")})
        assert page_errors(cdp.events) == []
    return seen


def test_cxr_predict_says_outside_and_writes_the_verdict_to_its_csv(fast_run, tmp_path):
    from cxrlab.runs import read_csv

    image, ct = _test_paths(fast_run)[0], _pydicom_file("CT_small.dcm")
    table = run_cli("predict", str(fast_run), image, ct, check=True)
    flags = [line for line in table.stderr.splitlines() if line.startswith("outside what")]
    assert len(flags) == 1 and ct in flags[0] and "modality 'CT'" in flags[0], table.stderr
    out = tmp_path / "p.csv"
    run_cli("predict", str(fast_run), image, ct, "--out", str(out), check=True)
    rows = {r["image"]: r for r in read_csv(out)}
    assert rows[ct]["in_distribution"] == "False" and "modality 'CT'" in rows[ct]["ood_reasons"]
    assert float(rows[ct]["ood_score"]) > float(rows[ct]["ood_threshold"])
    assert rows[image]["in_distribution"] in ("True", "False") and rows[image]["ood_score"]
