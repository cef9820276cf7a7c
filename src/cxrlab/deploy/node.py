"""`cxr node`: a run's model as a DICOM application beside a PACS.

Images come in two ways (either or both):

- **listen** (``--port``): a pynetdicom Storage SCP. Associations are accepted only from the calling AE
  titles in ``--allow`` (any other is rejected, and logged); the called AE title must be ``--ae-title``. A
  C-STORE whose object cannot be decoded as a radiograph by cxrlab's own reader (no pixel data, a damaged
  file, a multi-frame or non-image object) is answered with failure status 0xC000 and an error comment,
  logged in one line, and the node keeps serving. The SR and heatmap a cxrlab node made (a whole study
  sent back) are accepted and skipped.
- **watch** (``--watch URL``): a DICOMweb client (dicomweb-client) that lists the server's instances every
  ``--poll`` seconds (QIDO-RS), keeps those of ``--modalities`` not seen before (``seen.txt``) and fetches
  each as stored (WADO-RS, ``transfer-syntax=*``).

Each image takes exactly the path of ``cxr predict`` (:func:`cxrlab.evaluation.inference.iter_predictions`,
DICOM decoded by :mod:`cxrlab.data.dicom`) from an anonymous in-memory file (``memfd``: nothing is written to
disk), gets a heatmap from cxrlab's Grad-CAM engine (:class:`cxrlab.explain.inline.Explainer`, as
``cxr predict --explain`` and ``cxr serve`` make it), and its results go back into the same study
(:mod:`cxrlab.deploy.dicom_out`): a Comprehensive SR and a Secondary Capture of the overlay, by C-STORE to
``--pacs HOST:PORT:AET`` or else by STOW-RS to the ``--watch`` server.

Nothing is lost silently: a fetch or a store that fails is retried ``--retries`` times with exponential
backoff (``--backoff`` seconds, doubled each time), then logged and appended to ``failures.jsonl``. The
output folder (``--out``) holds ``node.log``, ``results.jsonl`` (one line per image: UIDs, decision,
probabilities, threshold, OOD verdict, the SR's and SC's UIDs, seconds taken), ``failures.jsonl`` and
``seen.txt`` (the instances done or reported, which a restarted watch skips; delete a line to redo one).

Privacy: the node logs and records UIDs, AE titles, addresses, classes and numbers only, never a header
value that names the patient (name, id, birth date, sex, accession number…); highdicom's and pydicom's
warnings, which can quote them, are silenced, and pynetdicom logs at WARNING only. The SR and SC keep the
source's patient and study attributes, as DICOM requires of objects in a study.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrlab._optional import require
from cxrlab.deploy import dicom_out
from cxrlab.deploy.export import run_id
from cxrlab.errors import ConfigError, CxrError
from cxrlab.evaluation.inference import LoadedRun, iter_predictions

LOGGER = "cxrlab.node"
MANUFACTURER = "cxrlab"  # the SR's and heatmap's Manufacturer: how a node knows its own outputs
FAILURE = 0xC000  # C-STORE "Error: cannot understand" (PS3.4 Annex B.2.3)
log = logging.getLogger(LOGGER)


@dataclass(frozen=True)
class Peer:
    """A DICOM application to send to: host, port and AE title (``HOST:PORT:AET``)."""

    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> Peer:
        host, _, rest = text.rpartition(":")
        host, _, port = host.rpartition(":")
        if not host or not port.isdigit() or not rest:
            raise ConfigError(f"--pacs {text!r}: give HOST:PORT:AET, e.g. 127.0.0.1:4242:ORTHANC")
        return cls(host, int(port), rest)


@dataclass
class NodeOptions:
    """What ``cxr node`` was asked to do (its options, one for one)."""

    out: Path
    port: int | None = None
    host: str = "127.0.0.1"
    ae_title: str = "CXRLAB"
    allow: tuple[str, ...] = ()
    pacs: Peer | None = None
    watch: str | None = None
    poll_s: float = 10.0
    modalities: tuple[str, ...] = ("CR", "DX")
    retries: int = 3
    backoff_s: float = 2.0
    once: bool = False

    def __post_init__(self) -> None:
        """Contradictory or missing options: one line, before any model is loaded."""
        if self.port is None and not self.watch:
            raise ConfigError("cxr node needs --port (receive C-STORE), --watch URL (poll DICOMweb) or both")
        if self.port is not None and not self.allow:
            raise ConfigError("--port receives images only from the AE titles in --allow AE1,AE2; give them")
        if self.pacs is None and not self.watch:
            raise ConfigError("results go to --pacs HOST:PORT:AET (C-STORE) or the --watch server (STOW-RS)")
        if self.once and not self.watch:
            raise ConfigError("--once polls --watch once and exits; it needs --watch URL")
        if self.retries < 0 or self.backoff_s < 0 or self.poll_s <= 0:
            raise ConfigError("--retries and --backoff must be >= 0 and --poll > 0")


@dataclass
class _Job:
    """One image to process: its Part 10 bytes (C-STORE), or the UIDs of an instance to fetch (watch)."""

    origin: str
    data: bytes | None = None
    uids: tuple[str, str, str] | None = None  # study, series, instance
    ids: dict[str, str] = field(default_factory=dict)  # study and instance UIDs, once read
    identity: set[str] = field(default_factory=set, repr=False)  # values scrubbed from any message


class DeliveryError(CxrError):
    """A fetch or store that failed on every try."""


@dataclass
class Node:
    """The running node: a job queue that one worker thread empties (one image at a time, one model)."""

    loaded: LoadedRun
    opts: NodeOptions
    explainer: Any | None = None  # cxrlab.explain.inline.Explainer, or None for an SR without a heatmap
    jobs: queue.Queue = field(default_factory=queue.Queue)
    seen: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.opts.out.mkdir(parents=True, exist_ok=True)
        self.version = run_id(self.loaded)
        self.model = str(self.loaded.meta.get("model", self.loaded.cfg.model.name))
        self.manufacturer = MANUFACTURER
        seen_file = self.opts.out / "seen.txt"
        if seen_file.is_file():
            self.seen.update(line.strip() for line in seen_file.read_text().splitlines() if line.strip())
        self._queued: set[str] = set()
        self.failures = 0  # reported in this run

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """Listen and/or watch until SIGINT/SIGTERM (or, with ``--once``, until one poll is processed)."""
        server = self._start_server() if self.opts.port is not None else None
        worker = threading.Thread(target=self._work, name="cxr-node-worker", daemon=True)
        worker.start()
        listed: list | None = []
        try:
            while not self._stop.is_set():
                if self.opts.watch:
                    listed = self.poll_once()
                if self.opts.once:
                    self.jobs.join()
                    break
                self._stop.wait(self.opts.poll_s if self.opts.watch else 3600)
        except KeyboardInterrupt:
            pass
        finally:
            if server is not None:
                server.shutdown()
            self.jobs.join()  # what was accepted is processed (or reported) before the node exits
            self._stop.set()
            log.info("node stopped")
        if self.opts.once and listed is None:  # a cron job learns it from the exit status
            raise CxrError(
                f"cannot list the instances at {self.opts.watch}; see {self.opts.out / 'node.log'}"
            )
        if self.opts.once and self.failures:
            raise CxrError(f"{self.failures} image(s) failed; listed in {self.opts.out / 'failures.jsonl'}")

    def stop(self) -> None:
        self._stop.set()

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                self.process(job)
            except Exception as exc:  # noqa: BLE001 - one bad image must never stop the node
                self._failed(job, "process", _reason(exc))
            finally:
                self.jobs.task_done()

    # ------------------------------------------------------------------ listen (C-STORE SCP)

    def _start_server(self) -> Any:
        pynetdicom = require("pynetdicom", "pacs", "cxr node")
        from pynetdicom import evt
        from pynetdicom.sop_class import Verification

        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        ae = pynetdicom.AE(ae_title=self.opts.ae_title)
        for context in pynetdicom.AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, pynetdicom.ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_calling_aet = list(self.opts.allow)
        ae.require_called_aet = True
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REJECTED, self._on_rejected)]
        try:
            server = ae.start_server((self.opts.host, self.opts.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise CxrError(
                f"cannot listen on {self.opts.host}:{self.opts.port} ({exc.strerror or exc}); "
                "choose another --port"
            ) from None
        log.info(
            "listening as AE %s on %s:%d, accepting C-STORE from %s",
            self.opts.ae_title, self.opts.host, self.opts.port, ", ".join(self.opts.allow),
        )  # fmt: skip
        return server

    def _on_rejected(self, event: Any) -> None:
        requestor = event.assoc.requestor
        log.warning(
            "association from AE %s at %s rejected: calling AE title not in --allow (or called AE not %s)",
            _ae(requestor.ae_title), requestor.address, self.opts.ae_title,
        )  # fmt: skip

    def _on_store(self, event: Any) -> Any:
        """Check that the object decodes as a radiograph (else a failure status), then queue it."""
        pydicom = require("pydicom", "pacs", "cxr node")
        calling = _ae(event.assoc.requestor.ae_title)
        sop = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "?")
        try:
            data = event.encoded_dataset()
            if _made_here(event.dataset):  # a whole study pushed back, with this node's SR and heatmap
                log.info(
                    "C-STORE of %s from %s: an SR/heatmap cxrlab made, accepted and skipped", sop, calling
                )
                return 0x0000
            size, resize = int(self.loaded.meta["image_size"]), self.loaded.meta.get("resize", "squash")
            self._decode(data, size, resize)
        except Exception as exc:  # noqa: BLE001 - a network peer can send anything: a status, one line
            why = _reason(exc)
            log.warning("C-STORE of %s from %s refused (status 0x%04X): %s", sop, calling, FAILURE, why)
            status = pydicom.Dataset()
            status.Status = FAILURE
            status.ErrorComment = why[:64]
            return status
        self.jobs.put(_Job(origin=f"C-STORE from {calling}", data=data))
        return 0x0000

    @staticmethod
    def _decode(data: bytes, size: int, resize: str) -> np.ndarray:
        from cxrlab.data.images import ImageReadError, load_gray

        with in_memory(data) as path:
            try:
                return load_gray(path, size, resize)
            except ImageReadError as exc:
                raise CxrError(f"not a usable radiograph: {exc}") from None

    # ------------------------------------------------------------------ watch (QIDO-RS, WADO-RS)

    def _client(self) -> Any:
        api = require("dicomweb_client.api", "pacs", "cxr node")
        logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
        client = api.DICOMwebClient(url=self.opts.watch)
        client.set_http_retry_params(retry=False)  # the node's own retries (--retries, --backoff) only
        return client

    def poll_once(self) -> list[tuple[str, str, str]] | None:
        """List the server's instances (QIDO-RS, paged) and queue those of ``--modalities`` not seen yet;
        returns their (study, series, instance) UIDs. A server that cannot be reached is one log line (and
        None)."""
        found: list[tuple[str, str, str]] = []
        try:
            client, offset = self._client(), 0
            while True:
                page = client.search_for_instances(fields=["00080060"], offset=offset, limit=500)
                for item in page:
                    uids = tuple(_value(item, tag) for tag in ("0020000D", "0020000E", "00080018"))
                    modality = _value(item, "00080060").upper()
                    if (all(uids) and modality in self.opts.modalities and uids[2] not in self.seen
                            and uids[2] not in self._queued):  # fmt: skip
                        found.append(uids)  # type: ignore[arg-type]
                if len(page) < 500:
                    break
                offset += len(page)
        except Exception as exc:  # noqa: BLE001 - a server down or refusing: say so, try at the next poll
            log.warning("watch: cannot list instances at %s (%s); next try in %g s",
                        self.opts.watch, _reason(exc), self.opts.poll_s)  # fmt: skip
            return None
        for uids in found:
            self._queued.add(uids[2])
            self.jobs.put(_Job(origin=f"DICOMweb {self.opts.watch}", uids=uids))
        if found:
            log.info("watch: %d new instance(s) at %s", len(found), self.opts.watch)
        return found

    def _fetch(self, uids: tuple[str, str, str]) -> bytes:
        client = self._client()
        ds = client.retrieve_instance(*uids, media_types=(("application/dicom", "*"),))  # as stored
        return dicom_out.to_bytes(ds)

    # ------------------------------------------------------------------ one image

    def process(self, job: _Job) -> dict[str, Any] | None:
        """Fetch (watch), predict, explain, write the SR and SC, store them back; record the outcome."""
        pydicom = require("pydicom", "pacs", "cxr node")
        uid = require("pydicom.uid", "pacs", "cxr node")
        start = time.perf_counter()
        data = job.data
        if data is None:
            assert job.uids is not None
            try:
                data = self._retry(f"WADO-RS fetch of {job.uids[2]}", lambda: self._fetch(job.uids))
            except DeliveryError as exc:
                return self._failed(job, "fetch", str(exc))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        ids = job.ids = {
            "study": str(source.get("StudyInstanceUID", "")),
            "instance": str(source.get("SOPInstanceUID", "")),
        }
        job.identity = _identity(source)
        with self._lock, in_memory(data) as path:
            result = next(iter(iter_predictions(self.loaded, [path], chunk=1, workers=1)))[0]
            if "error" in result:
                return self._failed(job, "decode", f"not a usable radiograph: {result['error']}", ids)
            heat = self._heatmap(path, result)
        sc = None
        if heat is not None:
            from PIL import Image

            overlay = np.asarray(Image.open(io.BytesIO(heat["png"])).convert("RGB"))
            sc = dicom_out.heatmap_image(
                source, overlay, uid.generate_uid(), uid.generate_uid(), self.manufacturer,
                f"cxrlab heatmap ({heat['method']}, {heat['class']})",
            )  # fmt: skip
        sr = dicom_out.structured_report(
            source, result, classes=self.loaded.classes,
            operating_point=self.loaded.meta.get("operating_point") or {}, model=self.model,
            version=self.version, series_uid=uid.generate_uid(), sop_uid=uid.generate_uid(),
            manufacturer=self.manufacturer, description=f"cxrlab findings ({self.version})",
            heatmap=sc, lung_share=None if heat is None else heat["lung_share"],
        )  # fmt: skip
        outputs = [sr] if sc is None else [sr, sc]
        try:
            where = self._retry(f"storing the results of {ids['instance']}", lambda: self._store(outputs))
        except DeliveryError as exc:
            return self._failed(job, "store", str(exc), ids)
        record = {
            "time": _now(), "origin": job.origin, **ids, "decision": dicom_out.decision_text(result),
            "probabilities": result["probabilities"],
            "threshold": (self.loaded.meta.get("operating_point") or {}).get("threshold"),
            "ood": dicom_out.ood_verdict(result.get("ood")),
            "lung_share": None if heat is None else heat["lung_share"],
            "sr": str(sr.SOPInstanceUID), "sc": None if sc is None else str(sc.SOPInstanceUID),
            "stored_to": where, "seconds": round(time.perf_counter() - start, 3),
        }  # fmt: skip
        self._append("results.jsonl", record)
        self._mark_seen(ids["instance"], str(sr.SOPInstanceUID), *([str(sc.SOPInstanceUID)] if sc else []))
        log.info(
            "instance %s (study %s): %s; SR %s%s stored to %s", ids["instance"], ids["study"],
            record["decision"], record["sr"], f" and heatmap SC {record['sc']}" if sc else "", where,
        )  # fmt: skip
        return record

    def _heatmap(self, path: str, result: dict[str, Any]) -> dict[str, Any] | None:
        if self.explainer is None:
            return None
        from cxrlab.data.images import load_gray

        ex = self.explainer
        image = load_gray(path, ex.size, ex.resize)
        display = load_gray(path, ex.display, ex.resize)
        probs = np.array([result["probabilities"][c] for c in self.loaded.classes])
        return ex.for_array(image, display, probs)

    def _store(self, outputs: list[Any]) -> str:
        """C-STORE to ``--pacs`` (one association), else STOW-RS to the ``--watch`` server."""
        if self.opts.pacs is None:
            response = self._client().store_instances(outputs)
            failed = response.get("FailedSOPSequence") if response is not None else None
            if failed:
                raise DeliveryError(f"STOW-RS refused {len(failed)} of {len(outputs)} object(s)")
            return f"STOW-RS {self.opts.watch}"
        pynetdicom = require("pynetdicom", "pacs", "cxr node")
        peer = self.opts.pacs
        ae = pynetdicom.AE(ae_title=self.opts.ae_title)
        for ds in outputs:
            ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
        if not assoc.is_established:
            raise DeliveryError(f"no association with {peer.ae_title} at {peer.host}:{peer.port}")
        try:
            for ds in outputs:
                status = assoc.send_c_store(ds)
                code = int(getattr(status, "Status", -1)) if status else -1
                if code != 0:
                    raise DeliveryError(f"{peer.ae_title} answered C-STORE with status 0x{code & 0xFFFF:04X}")
        finally:
            assoc.release()
        return f"C-STORE {peer.ae_title}@{peer.host}:{peer.port}"

    # ------------------------------------------------------------------ retries and records

    def _retry(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, tried 1 + ``--retries`` times with exponential backoff; :class:`DeliveryError` after."""
        delay, tries = self.opts.backoff_s, self.opts.retries + 1
        for attempt in range(1, tries + 1):
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - network and server errors of any kind
                if attempt == tries:
                    raise DeliveryError(f"{what} failed {tries} time(s), last: {_reason(exc)}") from None
                log.warning(
                    "%s failed (try %d of %d: %s); retrying in %g s",
                    what,
                    attempt,
                    tries,
                    _reason(exc),
                    delay,
                )
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _failed(self, job: _Job, stage: str, why: str, ids: dict[str, str] | None = None) -> None:
        ids = ids or job.ids or ({"study": job.uids[0], "instance": job.uids[2]} if job.uids else {})
        for value in sorted(job.identity, key=len, reverse=True):  # an unexpected error quoting the header
            why = why.replace(value, "[patient data removed]")
        record = {"time": _now(), "origin": job.origin, "stage": stage, **ids, "reason": why}
        self.failures += 1
        self._append("failures.jsonl", record)
        if ids.get("instance"):
            self._mark_seen(ids["instance"])  # reported, not retried at every poll; see docs/serving.md
        what = why if ids.get("instance", "?") in why else f"instance {ids.get('instance', '?')}: {why}"
        log.error(
            "FAILED (%s) from %s: %s; listed in %s", stage, job.origin, what, self.opts.out / "failures.jsonl"
        )
        return None

    def _append(self, name: str, record: dict[str, Any]) -> None:
        with open(self.opts.out / name, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=False) + "\n")

    def _mark_seen(self, *uids: str) -> None:
        new = [u for u in uids if u and u not in self.seen]
        self.seen.update(new)
        if new:
            with open(self.opts.out / "seen.txt", "a", encoding="utf-8") as fh:
                fh.write("".join(f"{u}\n" for u in new))


@contextlib.contextmanager
def in_memory(data: bytes) -> Iterator[str]:
    """A path to ``data`` held in an anonymous in-memory file (Linux ``memfd``), for path-based readers."""
    fd = os.memfd_create("cxrlab-node", getattr(os, "MFD_CLOEXEC", 0))
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def setup_logging(out: Path, echo: Callable[[str], None] | None = None) -> Path:
    """``out/node.log`` (and ``echo``, e.g. stderr) receive the node's log lines; returns the log's path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "node.log"
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(file_handler)
    if echo is not None:

        class _Echo(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                echo(self.format(record))

        log.addHandler(_Echo())
    logging.getLogger("pydicom").propagate = False  # its messages may quote header values
    return path


#: Header attributes whose values never enter a log or record (scrubbed from error messages too).
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "OtherPatientIDs",
               "OtherPatientNames", "PatientAddress", "AccessionNumber", "ReferringPhysicianName",
               "InstitutionName", "StudyID", "PatientMotherBirthName", "PatientTelephoneNumbers")  # fmt: skip


def _identity(ds: Any) -> set[str]:
    """The non-trivial values of :data:`IDENTIFYING` in ``ds`` (and each part of a person name)."""
    values: set[str] = set()
    for keyword in IDENTIFYING:
        value = ds.get(keyword)
        items = value if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue" else [value]
        for item in items:
            text = str(item or "").strip()
            values |= {text, *text.replace("^", " ").split()} if text else set()
    return {v for v in values if len(v) >= 3}


def _made_here(ds: Any) -> bool:
    """Whether ``ds`` is an SR or heatmap written by a cxrlab node (its Manufacturer and series)."""
    return str(ds.get("Manufacturer", "")) == MANUFACTURER and str(
        ds.get("SeriesDescription", "")
    ).startswith("cxrlab ")


def _value(item: dict[str, Any], tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or [""]
    return str(values[0]).strip()


def _ae(title: Any) -> str:
    return (title.decode("ascii", "replace") if isinstance(title, bytes) else str(title)).strip()


def _reason(exc: BaseException) -> str:
    """An exception as one short line: ``HTTP 404 Not Found``, the socket error (``[Errno 111] Connection
    refused``), else its text (its class name when it has none)."""
    response = getattr(exc, "response", None)
    if getattr(response, "status_code", None) is not None:
        return f"HTTP {response.status_code} {getattr(response, 'reason', '') or ''}".strip()
    text = " ".join(str(exc).split())
    if "[Errno" in text:
        text = text[text.index("[Errno") :].split(")")[0].rstrip("'\"")
    return (text or exc.__class__.__name__)[:300]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
