"""`cxr serve`: a run's model behind a small HTTP API (FastAPI) with a web page.

Routes: ``POST /v1/predict`` (multipart upload, field ``file``, of a PNG/JPEG/DICOM/… radiograph; a raw
``image/*`` or ``application/dicom`` body works too), ``GET /v1/model`` (classes, input contract, threshold,
headline metrics with 95% CIs, the run's audit and external-validation warnings), ``GET /healthz``,
``GET /docs`` (OpenAPI) and ``GET /`` (drop an image, see it with its probabilities and the model's known
limitations).

Safety: an upload is held in memory only — decoded from an anonymous in-memory file (``memfd``), so it
takes exactly the path ``cxr predict`` takes (:func:`cxrlab.data.images.load_gray`, DICOM included) and is
never written to disk. Bodies above the limit are refused from their Content-Length or while streaming
(413); bytes that are not an image 415; an image that cannot be decoded, or whose header claims more pixels
than ``CXRLAB_MAX_PIXELS`` (a decompression bomb), 422. With a token, every ``/v1`` route needs
``Authorization: Bearer TOKEN`` (401 otherwise, compared in constant time). Decoding runs on a bounded
thread pool and inference on one thread that takes waiting images as one batch, so concurrent requests
cannot oversubscribe the CPU; every failure is one line of JSON ``{"error": ...}`` and never stops the server.

Heatmaps: ``create_app(..., explain=factory)`` plugs in an explainer (``cxr serve`` passes cxrlab.explain's
Grad-CAM, so a server without heatmaps never loads it): ``factory(loaded)`` is called once and returns
``fn(image, display, probs) -> dict`` with ``png`` (overlay bytes), ``lung_share``, ``lung_area``, ``class``,
``method``, ``layer``.
``POST /v1/predict?heatmap=true`` asks for one (``heatmap=false`` declines; the default is ``heatmaps``,
``cxr serve --heatmaps``); it runs on the inference thread right after its batch, so heatmaps share the
inference bound and never run beside it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import io
import math
import os
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

try:  # module level: FastAPI resolves the handlers' annotations here
    from fastapi import Request
except ImportError:  # no [serve] extra: create_app() and serve() say in one line what to install
    Request = Any

from cxrlab._optional import require
from cxrlab.deploy.export import contract, run_id
from cxrlab.errors import CxrError
from cxrlab.evaluation.inference import LoadedRun, image_run
from cxrlab.evaluation.ood import OodGuard, not_assessed, upload_header
from cxrlab.reports.model_card import DISCLAIMER, card_for

DEFAULT_MAX_UPLOAD_MB = 20.0
TOKEN_ENV = "CXRLAB_SERVE_TOKEN"
#: Multipart framing (boundaries, part headers) allowed on top of the upload limit.
FRAMING_BYTES = 64 * 1024
HEATMAP_NOTE = "not requested: add ?heatmap=true for a Grad-CAM overlay and the lung-attention share"

#: Leading bytes of the image formats cxrlab decodes (DICOM: "DICM" at offset 128).
_SIGNATURES = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"II*\x00",
    b"MM\x00*",
    b"BM",
    b"GIF87a",
    b"GIF89a",
    b"P2",
    b"P5",
    b"P3",
    b"P6",
)

#: ``fn(image at the run's size, the same image at display size, probabilities) -> heatmap dict``.
ImageExplainer = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, Any]]
#: Called once with the loaded run; returns the per-image explainer.
Explainer = Callable[[LoadedRun], ImageExplainer]
DISPLAY_SIZE = 256


class ApiError(Exception):
    """A request that cannot be served: HTTP ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def sniff(data: bytes) -> str | None:
    """``"dicom"``, ``"image"`` (a format PIL decodes) or None from the first bytes."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return "image"
    return None


def decode_upload(data: bytes, size: int, resize: str) -> np.ndarray:
    """Decode uploaded bytes with cxrlab's own decoder (``load_gray``, DICOM included), from memory only.

    The bytes go into an anonymous in-memory file (Linux ``memfd``: RAM, no name, gone when closed) so the
    path-based decoder sees an ordinary file; elsewhere a ``BytesIO`` is decoded by PIL directly."""
    from cxrlab.data.images import load_gray

    if not hasattr(os, "memfd_create"):  # pragma: no cover - not Linux
        return load_gray(io.BytesIO(data), size, resize)  # type: ignore[arg-type]
    fd = os.memfd_create("cxrlab-upload", getattr(os, "MFD_CLOEXEC", 0))
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        return load_gray(f"/proc/self/fd/{fd}", size, resize)
    finally:
        os.close(fd)


@dataclass
class _Job:
    image: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    display: np.ndarray | None = None  # set: a heatmap is wanted


class Served(NamedTuple):
    """What :meth:`Predictor.submit` answers for one image."""

    probabilities: np.ndarray  # (K,) calibrated
    heatmap: dict[str, Any] | None  # None when none was asked for; a dict with "error" when none was made
    features: np.ndarray  # (D,) penultimate features: the input of the output layer (for the OOD guard)


BACKENDS = ("auto", "onnx", "torch")
#: What ``--backend auto`` needs for onnxruntime (the ``[export]`` extra).
_ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")
#: Images of the startup check that the ONNX graph gives PyTorch fp32's probabilities.
_STARTUP_CHECK_IMAGES = 4


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask; a container's cgpus where it limits it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class TorchEngine:
    """The run's PyTorch model (channels_last, the run's eval precision): the fallback backend."""

    name = "torch"

    def __init__(self, loaded: LoadedRun, device: str = "cpu", fp32: bool = False):
        from cxrlab.models.tta import with_tta
        from cxrlab.runtime import inference_dtype, prepare_for_inference

        self.loaded, self.device = loaded, device
        self.net = with_tta(prepare_for_inference(loaded.model, device), loaded.tta_shift)
        self.dtype = None if fp32 else inference_dtype(loaded.cfg.eval.precision, device)

    def __call__(self, images: np.ndarray, max_batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities ``(N, K)`` and penultimate features ``(N, D)`` of uint8 ``(N, H, W)``."""
        from cxrlab.data.prepare import to_tensor
        from cxrlab.evaluation.evaluate import logits_to_probs
        from cxrlab.runtime import batched

        meta, net = self.loaded.meta, self.net

        def run(x):
            feats = net.features(x)
            return net.head.out(feats), feats

        logits, feats = batched(
            run,
            lambda s: to_tensor(images[s], meta["channels"], tuple(meta["mean"]), tuple(meta["std"])),
            len(images),
            max_batch,
            self.device,
            self.dtype,
        )
        return logits_to_probs(logits, meta.get("temperature", 1.0)), feats


class OnnxEngine:
    """The run's model exported to ONNX in memory (:mod:`cxrlab.deploy.export`, with a second output
    ``features``) and run by an onnxruntime session on the CPU, ``threads`` intra-op threads."""

    name = "onnx"

    def __init__(self, loaded: LoadedRun, threads: int | None = None):
        from cxrlab.deploy.export import Exported, _onnx_bytes

        ort = require("onnxruntime", "export", "cxr serve --backend onnx")
        self.loaded = loaded
        self.threads = threads or cpu_cores()
        start = time.perf_counter()
        data = _onnx_bytes(Exported(loaded, features=True).eval(), int(loaded.meta["image_size"]),
                           contract(loaded))  # fmt: skip
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1  # one batch at a time: the inference thread
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # idle intra-op threads sleep instead of spinning: the decode threads need those cores between batches
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.version = ort.__version__
        self.export_s = time.perf_counter() - start
        self.bytes = len(data)

    def __call__(self, images: np.ndarray, max_batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities ``(N, K)`` and penultimate features ``(N, D)`` of uint8 ``(N, H, W)``."""
        probs, feats = [], []
        for start in range(0, len(images), max_batch):
            x = (images[start : start + max_batch].astype(np.float32) / 255.0)[:, None]
            p, f = self.session.run(None, {"image": x})
            probs.append(p)
            feats.append(f)
        return np.concatenate(probs), np.concatenate(feats)


def startup_check(engine: OnnxEngine, loaded: LoadedRun) -> float:
    """Max |Δp| between the ONNX graph and the PyTorch model in fp32 on a few fixed images (seeded noise
    and a gradient, no data folder needed); the real-image parity check is ``cxr export``'s and the tests'."""
    size = int(loaded.meta["image_size"])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (_STARTUP_CHECK_IMAGES, size, size), dtype=np.uint8)
    images[0] = np.linspace(0, 255, size, dtype=np.uint8)[None, :]
    reference, _ = TorchEngine(loaded, fp32=True)(images)
    got, _ = engine(images)
    return float(np.abs(got.astype(np.float64) - reference).max())


def make_engine(loaded: LoadedRun, backend: str = "auto", device: str = "cpu"
                ) -> tuple[TorchEngine | OnnxEngine, str]:  # fmt: skip
    """The inference engine for ``--backend`` (auto: onnx when onnxruntime and onnx are installed and the
    run infers in fp32, else torch) and one line saying which it is and why."""
    from cxrlab._optional import available
    from cxrlab.deploy.export import PARITY_TOLERANCE, require_onnx
    from cxrlab.runtime import inference_dtype

    if backend not in BACKENDS:
        raise CxrError(f"--backend {backend!r}: choose onnx, torch or auto")
    reduced = inference_dtype(loaded.cfg.eval.precision, device) is not None
    if backend == "auto":
        missing = [m for m in _ONNX_MODULES if not available(m)]
        why = (
            f"{', '.join(missing)} not installed; pip install 'cxrlab[export]' for onnxruntime" if missing
            else f"the run infers in {loaded.cfg.eval.precision} (eval.precision), onnxruntime in fp32"
            if reduced or device != "cpu" else None
        )  # fmt: skip
        if why:
            return TorchEngine(loaded, device), f"backend: PyTorch ({why})"
    if backend == "torch":
        return TorchEngine(loaded, device), "backend: PyTorch (--backend torch)"
    require_onnx()
    try:
        engine = OnnxEngine(loaded)
    except Exception as exc:  # noqa: BLE001 - a graph the exporter cannot take: PyTorch still serves it
        if backend == "onnx":
            why = f"{exc.__class__.__name__}: {' '.join(str(exc).splitlines())[:200]}"
            raise CxrError(
                f"--backend onnx: the model cannot be exported to ONNX ({why}); use --backend torch"
            ) from None
        return TorchEngine(loaded, device), f"backend: PyTorch (ONNX export failed: {exc.__class__.__name__})"
    diff = startup_check(engine, loaded)
    if not diff <= PARITY_TOLERANCE:  # NaN fails too
        if backend == "onnx":
            raise CxrError(
                f"--backend onnx: the ONNX graph differs from PyTorch by {diff:.2g} in probability "
                f"(limit {PARITY_TOLERANCE:g}); use --backend torch"
            )
        return TorchEngine(loaded, device), f"backend: PyTorch (ONNX differs by {diff:.2g})"
    return engine, (
        f"backend: onnxruntime {engine.version}, {engine.threads} intra-op thread(s), exported in "
        f"{engine.export_s:.1f} s, max |Δp| vs PyTorch fp32 {diff:.1e} at startup (--backend torch: PyTorch)"
    )


@dataclass
class Predictor:
    """The run's model, prepared once; :meth:`submit` batches images waiting at the same moment.

    ``backend``: ``auto`` (onnxruntime when installed, else PyTorch), ``onnx`` or ``torch``
    (:func:`make_engine`); ``backend_note`` says which one serves and why."""

    loaded: LoadedRun
    max_batch: int = 16
    device: str = "cpu"
    explain: ImageExplainer | None = None
    backend: str = "auto"
    _queue: list[_Job] = field(default_factory=list)
    _cv: threading.Condition = field(default_factory=threading.Condition)
    _thread: threading.Thread | None = None
    batches: int = 0

    def __post_init__(self) -> None:
        self.engine, self.backend_note = make_engine(self.loaded, self.backend, self.device)
        self.backend = self.engine.name
        self._thread = threading.Thread(target=self._loop, name="cxrlab-inference", daemon=True)
        self._thread.start()

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities ``(N, K)`` and penultimate features ``(N, D)`` for uint8 images
        ``(N, H, W)`` (same maths as cxr predict)."""
        return self.engine(images, self.max_batch)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(N, K)`` for uint8 images ``(N, H, W)``."""
        return self.predict(images)[0]

    async def submit(self, image: np.ndarray, display: np.ndarray | None = None) -> Served:
        """Probabilities and features of one image, and its heatmap when ``display`` is given (None, or
        a dict with ``error``, when none could be made); waits for the inference thread (one batch at a
        time)."""
        loop = asyncio.get_running_loop()
        job = _Job(image, loop.create_future(), loop, display)
        with self._cv:
            self._queue.append(job)
            self._cv.notify()
        return await job.future

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue:
                    self._cv.wait()
                jobs, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            try:
                probs, feats = self.predict(np.stack([j.image for j in jobs]))
                self.batches += 1
                results: list[Any] = [
                    Served(p, self._heatmap(j, p), f) for j, p, f in zip(jobs, probs, feats, strict=True)
                ]
            except Exception as exc:  # noqa: BLE001 - reported to each waiting request, never kills the thread
                results = [exc] * len(jobs)
            for job, res in zip(jobs, results, strict=True):
                job.loop.call_soon_threadsafe(_settle, job.future, res)

    def _heatmap(self, job: _Job, probs: np.ndarray) -> dict[str, Any] | None:
        """The heatmap of one job, on this thread (gradients: the same bound as inference)."""
        if job.display is None or self.explain is None or job.future.done():
            return None
        try:
            return self.explain(job.image, job.display, probs)
        except Exception as exc:  # noqa: BLE001 - the prediction still stands
            return {"error": f"no heatmap for this image ({exc.__class__.__name__}: {exc})"}


def _settle(future: asyncio.Future, result: Any) -> None:
    if future.done():  # the client went away
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def model_card(loaded: LoadedRun, rid: str) -> dict[str, Any]:
    """What ``GET /v1/model`` returns: the preprocessing and decision contract, then the run folder's model
    card (:mod:`cxrlab.reports.model_card`: intended use, training data and its ranked audit warnings,
    metrics with CIs, external validations, lung attention, the OOD guard, subgroups, ranked limitations;
    built now for a run trained before cards existed). ``create_app`` adds the server's ``heatmaps``."""
    card: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError, CxrError):  # an unreadable card: the contract is served
        card = card_for(loaded.path)
    return {**card, **contract(loaded, rid)}


MAX_UPLOAD_MB = 10_240
"""The largest ``--max-upload-mb`` accepted (10 GiB): far above any radiograph, small enough to hold."""


def check_max_upload_mb(value: float) -> None:
    """A finite upload limit above 0 and at most :data:`MAX_UPLOAD_MB`, or one line saying so."""
    if not (math.isfinite(value) and 0 < value <= MAX_UPLOAD_MB):
        raise CxrError(
            f"--max-upload-mb {value:g}: give a size in MB above 0 and at most {MAX_UPLOAD_MB:,} (10 GB), "
            f"e.g. {DEFAULT_MAX_UPLOAD_MB:g}"
        )


def create_app(
    run: str | Path,
    token: str | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    decode_workers: int = 2,
    max_batch: int = 16,
    explain: Explainer | None = None,
    heatmaps: bool = False,
    backend: str = "auto",
):
    """The FastAPI application serving ``run`` (the model is loaded and prepared here, once).

    ``explain``: the heatmap factory (module docstring); ``heatmaps``: a heatmap in every response unless
    the request says ``?heatmap=false`` (without it, only on ``?heatmap=true``); ``backend``: ``auto``,
    ``onnx`` or ``torch`` (:func:`make_engine`)."""
    require("fastapi", "serve", "cxr serve")
    require("python_multipart", "serve", "cxr serve")
    from fastapi import Depends, FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    check_max_upload_mb(max_upload_mb)
    loaded = image_run(run)
    rid = run_id(loaded)
    card = model_card(loaded, rid)
    guard = OodGuard.load(loaded.path)  # None: a run without one; every answer says "not assessed"
    image_explainer, why_not = None, "this server has no explainer"
    if explain is not None:
        try:
            image_explainer = explain(loaded)
        except CxrError as exc:  # e.g. a model without convolutions: predictions still served
            if heatmaps:
                raise
            why_not = " ".join(str(exc).splitlines())
    card["heatmaps"] = {
        "available": image_explainer is not None,
        "default": bool(heatmaps and image_explainer is not None),
        "method": getattr(image_explainer, "method", None),
        "layer": getattr(image_explainer, "layer_name", None),
        **({} if image_explainer is not None else {"why_not": why_not}),
    }
    predictor = Predictor(loaded, max_batch=max_batch, explain=image_explainer, backend=backend)
    card["backend"] = {"engine": predictor.backend, "note": predictor.backend_note}
    decoder = ThreadPoolExecutor(max_workers=max(1, decode_workers), thread_name_prefix="cxrlab-decode")
    limit = int(max_upload_mb * 1024 * 1024)
    size, resize = int(loaded.meta["image_size"]), loaded.meta.get("resize", "squash")
    started = time.time()
    stats = {"requests": 0, "errors": 0}

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="cxrlab prediction service",
        version=str(card["cxrlab_version"]),
        description=f"{card['model']} from run {rid}. {DISCLAIMER}",
        lifespan=lifespan,
    )

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(message).splitlines())}, status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        stats["errors"] += 1
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error(exc.status, exc.message, headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        return error(422, f"invalid request: {first.get('msg', 'bad input')} at {first.get('loc', '?')}")

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):  # the server keeps running
        stats["errors"] += 1
        return error(500, f"internal error: {exc.__class__.__name__}")

    async def authorised(request: Request) -> None:
        if not token:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise ApiError(
                401, "missing or wrong bearer token: send the header 'Authorization: Bearer TOKEN'"
            )

    @app.get("/healthz", summary="Liveness: the model is loaded")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "run_id": rid,
            "model": card["model"],
            "backend": predictor.backend,
            "uptime_s": round(time.time() - started, 1),
        }

    @app.get("/v1/model", summary="The model: classes, input contract, threshold, metrics, warnings",
             dependencies=[Depends(authorised)])  # fmt: skip
    async def model_info() -> dict[str, Any]:
        return card

    upload_schema = {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                },
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                "application/dicom": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        "responses": {
            "401": {"description": "missing or wrong bearer token"},
            "413": {"description": f"upload larger than the limit ({max_upload_mb:g} MB)"},
            "415": {"description": "not an image (PNG, JPEG, DICOM, TIFF, BMP, GIF, WebP, PGM)"},
            "422": {"description": "undecodable image, or a decompression bomb"},
        },
    }

    @app.post("/v1/predict", summary="Class probabilities and the decision for one radiograph",
              dependencies=[Depends(authorised)], openapi_extra=upload_schema)  # fmt: skip
    async def predict(request: Request) -> dict[str, Any]:
        t0 = time.perf_counter()
        stats["requests"] += 1
        want = want_heatmap(request.query_params.get("heatmap"), card["heatmaps"]["default"])
        if want and image_explainer is None:
            raise ApiError(400, f"heatmap=true: no heatmaps from this server ({why_not})")
        name, data = await read_upload(request, limit)
        kind = sniff(data)
        if kind is None:
            raise ApiError(
                415, f"{name or 'the upload'} is not an image: send a PNG, JPEG or DICOM radiograph"
            )
        loop = asyncio.get_running_loop()
        try:
            image = await loop.run_in_executor(decoder, decode_upload, data, size, resize)
            display = (
                await loop.run_in_executor(decoder, decode_upload, data, max(size, DISPLAY_SIZE), resize)
                if want
                else None
            )
        except Exception as exc:  # noqa: BLE001 - ImageReadError, DicomError…: the image is unusable
            raise ApiError(422, f"{name or 'the upload'} cannot be decoded: {exc}") from None
        header = upload_header(data) if kind == "dicom" else None  # view, body part, modality only
        del data
        served = await predictor.submit(image, display)
        heat = served.heatmap
        del display
        ood = guard.assess(served.features[None], [header])[0] if guard else not_assessed(header)
        response = decision(loaded, served.probabilities, rid, ood)
        if want:
            response.update(heatmap_fields(heat))
        elif image_explainer is None:
            response["heatmap_note"] = f"no heatmaps from this server ({why_not})"
        response["filename"] = name
        response["elapsed_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        html = render_page(card, needs_token=bool(token), max_upload_mb=max_upload_mb, nonce=nonce)
        csp = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
            "img-src 'self' blob: data:; connect-src 'self'; form-action 'none'; base-uri 'none'"
        )
        return HTMLResponse(
            html, headers={"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff"}
        )

    app.state.predictor = predictor
    app.state.card = card
    app.state.stats = stats
    return app


def want_heatmap(value: str | None, default: bool) -> bool:
    """The ``heatmap`` query parameter (true/false, 1/0, yes/no; absent: ``default``); 400 otherwise."""
    if value is None:
        return default
    v = value.strip().lower()
    if v in ("true", "1", "yes", "on"):
        return True
    if v in ("false", "0", "no", "off"):
        return False
    raise ApiError(400, f"heatmap={value[:40]!r}: use heatmap=true or heatmap=false")


def heatmap_fields(heat: dict[str, Any] | None) -> dict[str, Any]:
    """The response's heatmap fields: ``heatmap`` (overlay PNG, base64), ``heatmap_note``, ``lung_share``
    (share of the heatmap's mass on the lung fields; None for an all-zero heatmap), ``lung_area``."""
    if not heat or "png" not in heat:
        why = (heat or {}).get("error", "no heatmap for this image")
        return {"heatmap": None, "heatmap_note": why, "lung_share": None, "lung_area": None}
    share = heat.get("lung_share")
    note = (
        f"{heat['method']} overlay (PNG, base64) for class {heat['class']!r} at layer {heat['layer']}; "
        "white outline: the lung fields"
        + ("" if share is not None else "; all-zero heatmap (no positive evidence): no lung share")
    )
    return {
        "heatmap": base64.b64encode(heat["png"]).decode("ascii"),
        "heatmap_note": note,
        "heatmap_class": heat["class"],
        "lung_share": share,
        "lung_area": heat.get("lung_area"),
    }


def decision(
    loaded: LoadedRun, probs: np.ndarray, rid: str, ood: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON answer for one image: probabilities, the class at the saved operating threshold, and the
    out-of-distribution verdict (``ood``: :meth:`cxrlab.evaluation.ood.OodGuard.assess`'s entry; None: not
    assessed), also as the top-level ``in_distribution`` (True, False, or None when not assessed)."""
    from cxrlab.evaluation.evaluate import thresholded

    classes = loaded.classes
    op = loaded.meta.get("operating_point") or {}
    k = int(thresholded(probs[None, :], op, classes)[0])
    out: dict[str, Any] = {
        "model": loaded.meta.get("model", loaded.cfg.model.name),
        "run_id": rid,
        "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs, strict=True)},
        "class": classes[k],
        "decision": {
            "class": classes[k],
            "rule": (
                f"P({op['positive_class']}) >= {op['threshold']:.4f} ({op.get('method', '')})"
                if op.get("threshold") is not None and op.get("positive_class") is not None
                else "highest probability"
            ),
            "positive_class": op.get("positive_class"),
            "threshold": op.get("threshold"),
        },
        "heatmap": None,
        "heatmap_note": HEATMAP_NOTE,
        "lung_share": None,
    }
    out["ood"] = ood if ood is not None else not_assessed()
    out["in_distribution"] = out["ood"]["in_distribution"]
    return out


async def read_upload(request, limit: int) -> tuple[str, bytes]:
    """The uploaded file's name and bytes, read into memory with the size limit enforced (413)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ApiError(400, "invalid Content-Length header") from None
        if length > limit + FRAMING_BYTES:
            raise ApiError(413, f"upload of {length:,} bytes is larger than the {_mb(limit)} limit")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit + FRAMING_BYTES:
            raise ApiError(413, f"upload is larger than the {_mb(limit)} limit")
    ctype = request.headers.get("content-type", "")
    if ctype.lower().startswith("multipart/form-data"):
        name, data = parse_multipart(bytes(body), ctype)
    elif not body:
        raise ApiError(400, "empty request: upload an image as multipart form field 'file'")
    else:
        name, data = "", bytes(body)
    if len(data) > limit:
        raise ApiError(413, f"upload of {len(data):,} bytes is larger than the {_mb(limit)} limit")
    if not data:
        raise ApiError(400, "the uploaded file is empty")
    return name, data


def _mb(limit: int) -> str:
    return f"{limit / 1024 / 1024:g} MB"


def parse_multipart(body: bytes, content_type: str) -> tuple[str, bytes]:
    """The ``file`` part (or the first part with a filename) of a multipart body held in memory."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "malformed multipart request: no boundary in Content-Type")
    parts: list[dict[str, Any]] = []
    header: dict[str, bytes] = {"field": b"", "value": b""}

    def begin() -> None:
        parts.append({"headers": {}, "data": bytearray()})

    def field_(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def header_end() -> None:
        parts[-1]["headers"][header["field"].decode("latin-1").lower()] = header["value"]
        header["field"], header["value"] = b"", b""

    def part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"] += data[start:end]

    callbacks = {
        "on_part_begin": begin,
        "on_header_field": field_,
        "on_header_value": value,
        "on_header_end": header_end,
        "on_part_data": part_data,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # noqa: BLE001 - python-multipart raises its own errors on bad framing
        raise ApiError(400, f"malformed multipart request ({exc.__class__.__name__})") from None
    for part in parts:
        _, opts = parse_options_header(part["headers"].get("content-disposition", b""))
        part["name"] = opts.get(b"name", b"").decode("utf-8", "replace")
        part["filename"] = opts.get(b"filename", b"").decode("utf-8", "replace")
    named = [p for p in parts if p["name"] == "file"]
    chosen = named[0] if named else next((p for p in parts if p["filename"]), None)
    if chosen is None:
        raise ApiError(400, "no file in the request: send the image as multipart form field 'file'")
    return Path(chosen["filename"]).name, bytes(chosen["data"])


def render_page(card: dict[str, Any], needs_token: bool, max_upload_mb: float, nonce: str) -> str:
    """The upload page (``templates/serve.html``, in the style of cxrlab's reports)."""
    return (
        _environment()
        .get_template("serve.html")
        .render(
            page_kind="serve",
            card=card,
            needs_token=needs_token,
            max_upload_mb=f"{max_upload_mb:g}",
            nonce=nonce,
        )
    )


_ENV = None


def _environment():
    global _ENV
    if _ENV is None:
        import jinja2

        from cxrlab import pages

        _ENV = jinja2.Environment(
            loader=jinja2.ChoiceLoader(
                [jinja2.FileSystemLoader(Path(__file__).parent / "templates"), pages.ENV.loader]
            ),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        _ENV.filters.update(pages.ENV.filters)
    return _ENV


def check_port(host: str, port: int) -> None:
    """Refuse, in one line, an address that cannot be listened on (before loading anything heavy)."""
    import socket

    if not 0 < port < 65536:
        raise CxrError(f"--port {port}: choose a port between 1 and 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CxrError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise CxrError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port or --host"
            ) from None


def serve(
    run: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    decode_workers: int = 2,
    announce: Callable[[str], None] = print,
    explain: Explainer | None = None,
    heatmaps: bool = False,
    backend: str = "auto",
) -> None:
    """Serve ``run`` until interrupted (uvicorn, one process)."""
    uvicorn = require("uvicorn", "serve", "cxr serve")

    check_max_upload_mb(max_upload_mb)
    if not 1 <= decode_workers <= 256:
        raise CxrError(f"--decode-workers {decode_workers}: give a number of threads from 1 to 256")
    token = token or os.environ.get(TOKEN_ENV) or None
    if backend not in BACKENDS:
        raise CxrError(f"--backend {backend!r}: choose onnx, torch or auto")
    check_port(host, port)
    app = create_app(run, token=token, max_upload_mb=max_upload_mb, decode_workers=decode_workers,
                     explain=explain, heatmaps=heatmaps, backend=backend)  # fmt: skip
    card = app.state.card
    where = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    announce(f"serving {card['model']} (run {card['run_id']}) on {where}  ·  API docs: {where}/docs")
    announce(card["backend"]["note"])
    hm = card["heatmaps"]
    if hm["available"]:
        announce(
            f"heatmaps: {hm['method']} at {hm['layer']} with the lung-attention share, "
            + ("in every response (?heatmap=false skips)" if hm["default"] else "on ?heatmap=true")
        )
    if not token and host not in ("127.0.0.1", "localhost", "::1"):
        announce(
            f"warning: no --token (or {TOKEN_ENV}): anyone who can reach {host}:{port} can use the model"
        )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        limit_concurrency=64,
        timeout_keep_alive=5,
        server_header=False,
    )
    uvicorn.Server(config).run()
