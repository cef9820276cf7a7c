"""`cxr serve`: a real server process on 127.0.0.1, real HTTP requests with real images, the page in
Chromium."""

from __future__ import annotations

import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import time
import uuid
import zlib
from pathlib import Path

import pytest

from cxrlab.audit.severity import ranked
from tests.conftest import DATA, run_cli
from tests.trust.conftest import one_line_error

TOKEN = "s3cret-token-for-tests"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`cxr serve` in a subprocess; stopped at the end of the module."""

    def __init__(self, run: Path, *args: str, env: dict[str, str] | None = None):
        self.port = _free_port()
        cmd = [sys.executable, "-m", "cxrlab", "serve", str(run), "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})  # fmt: skip

    def wait(self, timeout: float = 240) -> Server:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, self.proc.communicate()
            try:
                if self.get("/healthz")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.3)
        raise AssertionError("server did not start")

    def request(self, method: str, path: str, body=None, headers=None) -> tuple[int, dict, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
            kind = resp.getheader("content-type", "")
            return (
                resp.status,
                (json.loads(raw) if "json" in kind else {"text": raw.decode()}),
                dict(resp.getheaders()),
            )
        finally:
            conn.close()

    def get(self, path: str, token: str | None = None):
        return self.request("GET", path, headers=_auth(token))

    def upload(self, name: str, data: bytes, token: str | None = None):
        body, ctype = _multipart(name, data)
        return self.request("POST", "/v1/predict", body, {"Content-Type": ctype, **_auth(token)})

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _multipart(name: str, data: bytes, field: str = "file") -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    head = f'--{b}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n\r\n'.encode()
    return head + data + f"\r\n--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def _png_bomb(side: int = 50_000) -> bytes:
    """A 74-byte PNG whose header claims side x side pixels (2.5 gigapixels at the default)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def servers(small_run):
    """Two real servers started together: one with a token (from the environment) and a 1 MB upload limit
    (heatmaps only on request), one open with the defaults (20 MB) and --heatmaps (in every response)."""
    locked = Server(small_run, "--max-upload-mb", "1", env={"CXRLAB_SERVE_TOKEN": TOKEN})
    open_ = Server(small_run, "--heatmaps")
    try:
        yield locked.wait(), open_.wait()
    finally:
        for s in (locked, open_):
            s.stop()


@pytest.fixture(scope="module")
def reference(small_run, test_images):
    proc = run_cli("predict", str(small_run), *map(str, test_images[:2]), "--json", check=True)
    return {r["image"]: r for r in json.loads(proc.stdout)}


def test_predict_model_health_and_docs(servers, small_run, test_images, reference):
    locked, open_ = servers
    meta = json.loads((small_run / "model.json").read_text())
    for image in test_images[:2]:
        status, body, _ = locked.upload(image.name, image.read_bytes(), TOKEN)
        assert status == 200, body
        # `cxr predict`'s probabilities (same decoder, same model, same calibration), served through
        # onnxruntime: within the export's parity limit of PyTorch fp32
        assert _close(body["probabilities"], reference[str(image)]["probabilities"])
        assert body["class"] == body["decision"]["class"] == reference[str(image)]["class"]
        assert body["decision"]["threshold"] == meta["operating_point"]["threshold"]
        assert body["model"] == "small_cnn" and body["run_id"].startswith("run@")
        assert body["heatmap"] is None and "add ?heatmap=true" in body["heatmap_note"]
        assert body["filename"] == image.name
    # a raw image body works too; and a DICOM file goes through the same decoder
    status, raw, _ = open_.request(
        "POST", "/v1/predict", test_images[0].read_bytes(), {"Content-Type": "image/jpeg"}
    )
    assert status == 200 and _close(raw["probabilities"], reference[str(test_images[0])]["probabilities"])
    dicom = sorted((DATA / "dicom").glob("*.dcm"))[0]
    status, body, _ = open_.upload(dicom.name, dicom.read_bytes())
    assert status == 200, body
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-5

    status, model, _ = open_.get("/v1/model")
    assert status == 200
    metrics = json.loads((small_run / "metrics.json").read_text())
    assert model["classes"] == ["covid", "normal"] and model["input"]["image_size"] == 64
    assert model["operating_point"]["threshold"] == meta["operating_point"]["threshold"]
    assert model["metrics"]["auc"]["value"] == pytest.approx(metrics["test"]["auc"])
    assert model["metrics"]["auc"]["ci95"] == pytest.approx(metrics["test"]["auc_ci95"])
    # the run folder's model card (cxrlab.reports.model_card): audit warnings each once, most severe first
    assert model["warnings"]["audit"] == [w["text"] for w in ranked(metrics["audit"]["warnings"])]
    assert model["warnings"]["lung_attention"] == metrics["lung_attention"]["warnings"]
    assert any("Not validated on any external dataset" in x["text"] for x in model["limitations"])

    health = open_.get("/healthz")[1]
    assert health["status"] == "ok" and health["backend"] == "onnx"  # the default where onnxruntime is
    assert model["backend"]["engine"] == "onnx" and "onnxruntime" in model["backend"]["note"]
    status, docs, _ = open_.get("/docs")
    assert status == 200 and "swagger" in docs["text"].lower()
    status, spec, _ = open_.get("/openapi.json")
    assert {"/v1/predict", "/v1/model", "/healthz"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]


def _close(got: dict, expected: dict, tol: float = 1e-4) -> bool:
    """Same classes, each probability within ``tol`` (the export's parity limit; both rounded to 1e-6)."""
    return got.keys() == expected.keys() and all(abs(got[k] - expected[k]) <= tol + 1e-6 for k in got)


def _heatmap_reference(run: Path, image: Path) -> dict:
    """The heatmap cxrlab's Explainer makes in this process for ``image`` (same decoder, same model)."""
    from cxrlab.data.images import load_gray
    from cxrlab.evaluation.inference import image_run, predict_arrays
    from cxrlab.explain.inline import Explainer

    loaded = image_run(run)
    small, display = load_gray(image, 64), load_gray(image, 256)
    probs, _ = predict_arrays(loaded, small[None])
    return Explainer(loaded)(small, display, probs[0])


def test_heatmaps_with_the_lung_share(servers, small_run, test_images, reference):
    """--heatmaps: an overlay PNG and the lung share in every response, equal to cxrlab's own Explainer on
    the same image; ?heatmap=false skips it; without --heatmaps only ?heatmap=true asks for one."""
    import base64
    import io
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from PIL import Image

    locked, open_ = servers
    image = test_images[0]
    expected = _heatmap_reference(small_run, image)
    status, body, _ = open_.upload(image.name, image.read_bytes())
    assert status == 200, body
    # the heatmap changes nothing
    assert _close(body["probabilities"], reference[str(image)]["probabilities"])
    png = base64.b64decode(body["heatmap"])
    assert png == expected["png"]
    overlay = np.asarray(Image.open(io.BytesIO(png)))
    assert overlay.shape == (256, 256, 3) and (overlay[..., 0] != overlay[..., 2]).any()  # coloured
    assert body["lung_share"] == expected["lung_share"] and body["lung_area"] == expected["lung_area"]
    assert body["lung_share"] is None or 0 <= body["lung_share"] <= 1
    assert 0.05 < body["lung_area"] < 0.8 and body["heatmap_class"] == body["class"]
    assert "gradcam overlay" in body["heatmap_note"] and "at layer backbone" in body["heatmap_note"]
    # four at once: all answered from the one inference thread, identical
    with ThreadPoolExecutor(4) as pool:
        many = list(pool.map(lambda _: open_.upload(image.name, image.read_bytes()), range(4)))
    assert all(s == 200 and b["heatmap"] == body["heatmap"] for s, b, _ in many)

    def post(server, query: str, token: str | None = None):
        data, ctype = _multipart(image.name, image.read_bytes())
        return server.request("POST", f"/v1/predict{query}", data, {"Content-Type": ctype, **_auth(token)})

    status, body, _ = post(open_, "?heatmap=false")
    assert status == 200 and body["heatmap"] is None and body["lung_share"] is None
    status, body, _ = post(locked, "?heatmap=true", TOKEN)
    assert status == 200 and base64.b64decode(body["heatmap"]) == expected["png"]
    assert body["lung_share"] == expected["lung_share"]
    status, err, _ = post(open_, "?heatmap=maybe")
    assert status == 400 and err == {"error": "heatmap='maybe': use heatmap=true or heatmap=false"}
    assert open_.get("/v1/model")[1]["heatmaps"] == {
        "available": True, "default": True, "method": "gradcam", "layer": "backbone"
    }  # fmt: skip
    assert locked.get("/v1/model", TOKEN)[1]["heatmaps"]["default"] is False


def test_bad_requests_get_a_status_and_one_line(servers, test_images, tmp_path):
    locked, open_ = servers
    image = test_images[0].read_bytes()
    # 401: no token, a wrong token, a wrong scheme; /healthz stays open
    for headers in ({}, _auth("wrong"), {"Authorization": f"Basic {TOKEN}"}):
        body, ctype = _multipart("x.jpeg", image)
        status, err, hdrs = locked.request("POST", "/v1/predict", body, {"Content-Type": ctype, **headers})
        assert status == 401 and "bearer token" in err["error"] and hdrs.get("www-authenticate") == "Bearer"
    assert locked.get("/v1/model")[0] == 401 and locked.get("/v1/model", TOKEN)[0] == 200
    assert locked.get("/healthz")[0] == 200
    assert locked.upload("x.jpeg", image, TOKEN)[0] == 200

    # 413: above the limit, told by Content-Length, and streamed without one (chunked)
    big = b"\xff\xd8\xff" + os.urandom(1024 * 1024 + 100_000)
    status, err, _ = locked.upload("big.jpeg", big, TOKEN)
    assert status == 413 and "larger than the 1 MB limit" in err["error"]
    conn = http.client.HTTPConnection("127.0.0.1", open_.port, timeout=60)
    chunks = (os.urandom(1 << 20) for _ in range(22))
    conn.request(
        "POST", "/v1/predict", body=chunks, headers={"Content-Type": "image/jpeg"}, encode_chunked=True
    )
    resp = conn.getresponse()
    assert resp.status == 413 and "20 MB limit" in json.loads(resp.read())["error"]
    conn.close()

    cases = {  # name: (bytes, status, words in the message)
        "notes.txt": (b"just some text, not an image\n" * 10, 415, "is not an image"),
        "page.html": (b"<html><body>hi</body></html>", 415, "is not an image"),
        "truncated.jpeg": (image[: len(image) // 3], 422, "cannot be decoded"),
        "corrupt.png": (b"\x89PNG\r\n\x1a\n" + os.urandom(300), 422, "cannot be decoded"),
        "bomb.png": (_png_bomb(), 422, "pixel limit"),
        "broken.dcm": (b"\0" * 128 + b"DICM" + os.urandom(200), 422, "cannot be decoded"),
    }
    for name, (data, code, words) in cases.items():
        status, err, _ = open_.upload(name, data)
        assert status == code, (name, err)
        assert set(err) == {"error"} and words in err["error"] and "\n" not in err["error"], (name, err)
    # malformed requests: no file field, bad multipart framing, an empty body, garbage on the socket
    body, ctype = _multipart("x.jpeg", image, field="other")
    status, err, _ = open_.request(
        "POST", "/v1/predict", body.replace(b'filename="x.jpeg"', b""), {"Content-Type": ctype}
    )
    assert status == 400 and "multipart form field 'file'" in err["error"]
    status, err, _ = open_.request(
        "POST", "/v1/predict", b"--nope\r\n\r\n", {"Content-Type": "multipart/form-data"}
    )
    assert status == 400 and "malformed multipart" in err["error"]
    assert open_.request("POST", "/v1/predict", b"", {"Content-Type": "image/png"})[0] == 400
    with socket.create_connection(("127.0.0.1", open_.port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01 this is not HTTP at all\r\n\r\n" + os.urandom(512))
        sock.recv(1024)
    # ... and the server is still up and still answers correctly
    assert open_.proc.poll() is None and locked.proc.poll() is None
    status, body, _ = open_.upload(test_images[1].name, test_images[1].read_bytes())
    assert status == 200 and body["class"] in ("covid", "normal")


def test_serve_refusals(small_run, servers, tmp_path):
    locked, _ = servers
    line = one_line_error(run_cli("serve", str(small_run), "--port", str(locked.port)))
    assert f"cannot listen on 127.0.0.1:{locked.port}" in line and "choose another --port" in line
    line = one_line_error(run_cli("serve", str(tmp_path), "--port", str(_free_port())))
    assert "not a cxrlab run folder" in line
    line = one_line_error(run_cli("serve", str(small_run), "--heatmaps", "--method", "shap"))
    assert "unknown --method 'shap'; choose one of gradcam" in line
    port = str(_free_port())
    line = one_line_error(run_cli("serve", str(small_run), "--port", port, "--heatmaps", "--layer", "x.99"))
    assert "unknown --layer 'x.99' in small_cnn" in line


def test_upload_page_in_headless_chromium(servers, test_images, reference):
    """A real upload through the page: the file input gets a real test image, the page posts it, and
    the result (image, decision, probabilities, limitations) renders with no console error."""
    from tests.browser import chromium, chromium_page, page_errors

    if chromium() is None:
        pytest.skip(
            "chromium is not installed (CI installs it in .ci/run; locally: apt-get install chromium)"
        )
    _, open_ = servers
    with chromium_page(("Page", "Runtime", "Log", "DOM"), timeout=60) as cdp:
        cdp.call("Page.navigate", url=f"http://127.0.0.1:{open_.port}/")
        cdp.wait_for("Page.loadEventFired", 60)

        def js(expr: str):
            return cdp.call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")

        assert js("document.querySelector('meta[name=\"cxrlab-page\"]').content") == "serve"
        assert "Known limitations" in js("document.body.innerText")
        root = cdp.call("DOM.getDocument")["root"]["nodeId"]
        node = cdp.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
        image = test_images[0]
        cdp.call("DOM.setFileInputFiles", files=[str(image)], nodeId=node)
        end = time.monotonic() + 120
        while js("document.getElementById('result').hidden") and time.monotonic() < end:
            assert "error" not in (js("document.getElementById('status').className") or ""), js(
                "document.getElementById('status').textContent"
            )
            time.sleep(0.3)
        state = json.loads(
            js("""JSON.stringify({
            decision: document.getElementById('decision').textContent,
            rows: Array.from(document.querySelectorAll('#probs tbody tr')).map(r => r.cells[0].textContent),
            probs: Array.from(document.querySelectorAll('#probs tbody tr')).map(r => +r.cells[1].textContent),
            preview: document.getElementById('preview').naturalWidth,
            caption: document.getElementById('caption').textContent,
            heatmap: document.getElementById('heatmap').textContent,
            heatShown: !document.getElementById('heatfigure').hidden,
            heatWidth: document.getElementById('heatimg').naturalWidth,
            heatCaption: document.getElementById('heatcaption').textContent,
            status: document.getElementById('status').textContent})""")
        )
        assert state["decision"] == _page_decision(reference[str(image)])
        assert state["rows"] == ["covid", "normal"] and abs(sum(state["probs"]) - 1) < 0.01
        assert state["preview"] > 0 and state["caption"] == image.name
        assert state["heatmap"] == "" and state["status"].startswith("done in")
        # the Grad-CAM overlay beside the image, with its lung-attention share
        assert state["heatShown"] and state["heatWidth"] == 256
        assert "lung-attention share" in state["heatCaption"], state["heatCaption"]
        errors = page_errors(cdp.events)
        assert errors == [], errors


def _js(cdp, expr: str):
    """The value of a JavaScript expression in the page."""
    return cdp.call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")


#: What a reader sees of the result panel: whether it is on screen, what it holds, and any image on screen
#: that shows nothing (no decoded bitmap: the browser's broken-image icon).
_SEEN = """JSON.stringify({
  shown: document.getElementById('result').getClientRects().length > 0,
  display: getComputedStyle(document.getElementById('result')).display,
  tableShown: document.getElementById('probs').getClientRects().length > 0,
  rows: document.querySelectorAll('#probs tbody tr').length,
  decision: document.getElementById('decision').textContent,
  caption: document.getElementById('caption').textContent,
  brokenOnScreen: Array.from(document.images).filter(i => i.getClientRects().length > 0
                                                   && !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
  previewOnScreen: document.getElementById('preview').getClientRects().length > 0,
  previewWidth: document.getElementById('preview').naturalWidth,
  status: document.getElementById('status').textContent,
  error: document.getElementById('status').className === 'error'})"""


def _choose(cdp, path: Path) -> dict:
    """Choose ``path`` in the page's file input (as a user's file dialog does) and wait for the answer."""
    _js(cdp, "document.getElementById('status').textContent = ''")
    root = cdp.call("DOM.getDocument")["root"]["nodeId"]
    node = cdp.call("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    cdp.call("DOM.setFileInputFiles", files=[str(path)], nodeId=node)
    return _answer(cdp, f"choosing {path.name}")


def _answer(cdp, what: str) -> dict:
    end = time.monotonic() + 120
    while time.monotonic() < end:
        status = _js(cdp, "document.getElementById('status').textContent") or ""
        if status and not status.startswith("predicting"):
            return json.loads(_js(cdp, _SEEN))
        time.sleep(0.2)
    raise AssertionError(f"the page did nothing after {what} (status {status!r})")


def _type_token(cdp, token: str, enter: bool = False) -> None:
    """Type into the token field as a keyboard does (and press Enter)."""
    _js(cdp, "document.getElementById('token').value = ''; document.getElementById('token').focus()")
    cdp.call("Input.insertText", text=token)
    if enter:
        _js(cdp, "document.getElementById('status').textContent = ''")
        for kind in ("keyDown", "keyUp"):
            cdp.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter",
                     windowsVirtualKeyCode=13, nativeVirtualKeyCode=13)  # fmt: skip


def _shot(cdp, path: Path) -> None:
    import base64

    path.write_bytes(base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"]))


def _page_decision(want: dict) -> str:
    """The page's decision line for cxr predict's result ``want``: its class, or the OOD guard's words where
    the guard flags the image (cxrlab.evaluation.ood)."""
    outside = want["ood"]["in_distribution"] is False
    return "outside what this model was validated on" if outside else f"→ {want['class']}"


def test_page_start_state_token_retry_and_errors_in_chromium(servers, test_images, tmp_path, reference):
    """The page's three states a user meets on a server with a token, in a real Chromium: before any upload
    nothing of a result is on screen (no broken image, no empty table); after a 401 the token is typed and
    the *same* file chosen again is sent (and Enter in the token field retries it); an error after a result
    clears that result. Screenshots of each state go to the test's tmp folder."""
    from tests.browser import chromium, chromium_page, page_errors

    if chromium() is None:
        pytest.skip(
            "chromium is not installed (CI installs it in .ci/run; locally: apt-get install chromium)"
        )
    locked, _ = servers
    image = test_images[0]
    not_image = tmp_path / "notes.png"
    not_image.write_bytes(b"this is a text file with an image's name\n" * 20)
    with chromium_page(("Page", "Runtime", "Log", "DOM"), timeout=60) as cdp:
        cdp.call(
            "Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False
        )
        cdp.call("Page.navigate", url=f"http://127.0.0.1:{locked.port}/")
        cdp.wait_for("Page.loadEventFired", 60)

        start = json.loads(_js(cdp, _SEEN))
        _shot(cdp, tmp_path / "1-start.png")
        assert not start["shown"] and start["display"] == "none", start
        assert not start["tableShown"] and start["brokenOnScreen"] == [], start

        # no token yet: 401, said in the status line, nothing else on screen
        seen = _choose(cdp, image)
        _shot(cdp, tmp_path / "2-401.png")
        assert (
            seen["error"] and "bearer token" in seen["status"] and "enter the access token" in seen["status"]
        )
        assert not seen["shown"] and seen["brokenOnScreen"] == [], seen

        # the token typed, the same file chosen again: sent, answered, shown
        _type_token(cdp, TOKEN)
        seen = _choose(cdp, image)
        _shot(cdp, tmp_path / "3-result.png")
        assert not seen["error"] and seen["status"].startswith("done in"), seen
        assert seen["shown"] and seen["rows"] == 2, seen
        assert seen["decision"] == _page_decision(reference[str(image)]), seen
        assert seen["previewOnScreen"] and seen["previewWidth"] > 0 and seen["caption"] == image.name
        assert seen["brokenOnScreen"] == [], seen

        # an error after a result: the error alone, the earlier result gone
        seen = _choose(cdp, not_image)
        _shot(cdp, tmp_path / "4-error-after-result.png")
        assert seen["error"] and "notes.png is not an image" in seen["status"], seen
        assert not seen["shown"] and seen["rows"] == 0 and seen["decision"] == "" and seen["caption"] == ""
        assert seen["brokenOnScreen"] == [], seen

        # a wrong token, then the right one and Enter: the refused file is sent again without choosing it
        _type_token(cdp, "wrong-token")
        seen = _choose(cdp, image)
        assert seen["error"] and "bearer token" in seen["status"] and not seen["shown"], seen
        _type_token(cdp, TOKEN, enter=True)
        seen = _answer(cdp, "Enter in the token field")
        _shot(cdp, tmp_path / "5-retried.png")
        assert seen["status"].startswith("done in") and seen["shown"] and seen["rows"] == 2, seen
        errors = [e for e in page_errors(cdp.events) if "401" not in e and "415" not in e]
        assert errors == [], errors


def test_onnx_backend_matches_pytorch_fp32_on_real_test_images(small_run):
    """The served ONNX graph (exported in memory at startup) against PyTorch fp32 on the run's own test
    images: probabilities within the export's parity limit (1e-4) and the same penultimate features that
    cxrlab.evaluation.evaluate.predict_images gives (the OOD guard's input); PyTorch serves on request."""
    import numpy as np

    from cxrlab.deploy.export import PARITY_TOLERANCE, parity
    from cxrlab.deploy.serve import OnnxEngine, Predictor, TorchEngine, make_engine
    from cxrlab.evaluation.evaluate import logits_to_probs, predict_images
    from cxrlab.evaluation.inference import image_run, sample_test_images

    loaded = image_run(small_run)
    engine, note = make_engine(loaded, "auto")
    assert isinstance(engine, OnnxEngine) and note.startswith("backend: onnxruntime"), note
    assert engine.session.get_outputs()[1].name == "features" and engine.threads >= 1
    images, _ = sample_test_images(loaded, 32)
    assert len(images) == 32
    meta = loaded.meta
    logits, feats = predict_images(loaded.model, images, meta["channels"], tuple(meta["mean"]),
                                   tuple(meta["std"]), "cpu", "32", tta_shift=loaded.tta_shift)  # fmt: skip
    probs, got_feats = engine(images, max_batch=16)  # two batches
    assert probs.shape == (32, 2) and got_feats.shape == feats.shape
    assert np.abs(probs - logits_to_probs(logits, meta.get("temperature", 1.0))).max() <= PARITY_TOLERANCE
    assert np.abs(got_feats - feats).max() <= 1e-4 * max(1.0, float(np.abs(feats).max()))
    assert np.ptp(probs[:, 0]) > 0.01  # real, varied predictions, not a constant
    # the export's own parity check (32 real test images) accepts the served graph's first output
    from cxrlab.deploy.export import Exported, _onnx_bytes, contract

    graph = _onnx_bytes(Exported(loaded, features=True).eval(), int(meta["image_size"]), contract(loaded))
    assert parity(loaded, graph, "onnx")["max_abs_diff"] <= PARITY_TOLERANCE
    # --backend torch: PyTorch, the same numbers within the limit
    torch_engine, note = make_engine(loaded, "torch")
    assert isinstance(torch_engine, TorchEngine) and note == "backend: PyTorch (--backend torch)"
    torch_probs, torch_feats = torch_engine(images)
    assert np.abs(torch_probs - probs).max() <= PARITY_TOLERANCE
    assert np.abs(torch_feats - got_feats).max() <= 1e-4 * max(1.0, float(np.abs(feats).max()))
    predictor = Predictor(loaded, backend="torch")
    assert predictor.backend == "torch" and np.array_equal(
        predictor.probabilities(images[:3]), torch_probs[:3]
    )


BLOCK_ONNX = r"""
import json, sys
for name in ("onnxruntime", "onnx", "onnxscript"):
    sys.modules[name] = None  # as on an install without the [export] extra
from cxrlab.deploy.serve import make_engine
from cxrlab.errors import CxrError
from cxrlab.evaluation.inference import image_run

loaded = image_run(sys.argv[1])
engine, note = make_engine(loaded, "auto")
try:
    make_engine(loaded, "onnx")
    refused = None
except CxrError as exc:
    refused = str(exc)
try:
    make_engine(loaded, "tensorrt")
except CxrError as exc:
    unknown = str(exc)
print(json.dumps({"engine": engine.name, "note": note, "refused": refused, "unknown": unknown}))
"""


def test_without_onnxruntime_the_server_falls_back_to_pytorch_and_says_so(small_run):
    proc = subprocess.run([sys.executable, "-c", BLOCK_ONNX, str(small_run)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["engine"] == "torch"
    assert out["note"] == (
        "backend: PyTorch (onnx, onnxscript, onnxruntime not installed; "
        "pip install 'cxrlab[export]' for onnxruntime)"
    )
    assert "needs the optional dependency onnx" in out["refused"] and "cxrlab[export]" in out["refused"]
    assert out["unknown"] == "--backend 'tensorrt': choose onnx, torch or auto"
