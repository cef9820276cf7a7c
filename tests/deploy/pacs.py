"""A throwaway Orthanc PACS for the DICOM node's tests: 127.0.0.1, a config and a storage folder in tmp,
free ports, started as a subprocess and killed at the end; plus small pynetdicom/REST helpers."""

from __future__ import annotations

import glob
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PLUGIN_GLOB = "/usr/share/orthanc/plugins*/libOrthancDicomWeb.so*"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    """A running Orthanc: REST at :attr:`http`, DICOMweb at :attr:`dicomweb`, DICOM at ``dicom_port``."""

    http: str
    dicom_port: int
    aet: str
    node_port: int  # the port Orthanc knows the node ("cxrlab" modality, AE CXRLAB) by
    proc: subprocess.Popen
    log: Path

    @property
    def dicomweb(self) -> str:
        return f"{self.http}/dicom-web"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.http + path, timeout=30) as r:
            return json.loads(r.read())

    def file(self, orthanc_id: str) -> bytes:
        with urllib.request.urlopen(f"{self.http}/instances/{orthanc_id}/file", timeout=30) as r:
            return r.read()

    def post(self, path: str, body: Any) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.http + path, data=data, method="POST")
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read() or b"null")

    def delete(self, path: str) -> None:
        req = urllib.request.Request(self.http + path, method="DELETE")
        urllib.request.urlopen(req, timeout=30).close()

    def instances(self, modality: str | None = None) -> list[dict[str, Any]]:
        """Every instance (``/instances?expand``), optionally of one modality (series-level tag)."""
        out = []
        for inst in self.get("/instances?expand"):
            series = self.get(f"/series/{inst['ParentSeries']}")
            if modality is None or series["MainDicomTags"].get("Modality") == modality:
                out.append({**inst, "Modality": series["MainDicomTags"].get("Modality")})
        return out


def start_orthanc(root: Path, node_port: int) -> Orthanc:
    """Start Orthanc with the DICOMweb plugin on free 127.0.0.1 ports; skip (a failure under
    CXRLAB_REQUIRE_ALL=1) when it is not installed."""
    binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    plugins = sorted(glob.glob(PLUGIN_GLOB))
    if binary is None or not plugins:
        pytest.skip(
            "Orthanc and its DICOMweb plugin are not installed (apt-get install orthanc orthanc-dicomweb)"
        )
    http_port, dicom_port = free_port(), free_port()
    storage = root / "storage"
    storage.mkdir(parents=True)
    config = {
        "Name": "cxrlab-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "Plugins": [plugins[0]],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True, "DicomCheckCalledAet": False,
        "DicomModalities": {"cxrlab": ["CXRLAB", "127.0.0.1", node_port]}, "HttpCompressionEnabled": False,
    }  # fmt: skip
    (root / "orthanc.json").write_text(json.dumps(config, indent=1))
    log = root / "orthanc.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([binary, str(root / "orthanc.json")], stdout=fh, stderr=subprocess.STDOUT)
    orthanc = Orthanc(f"http://127.0.0.1:{http_port}", dicom_port, "ORTHANC", node_port, proc, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"Orthanc exited ({proc.returncode}):\n{log.read_text()[-2000:]}")
        try:
            orthanc.get("/system")
            return orthanc
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"Orthanc did not answer on {orthanc.http} within 60 s:\n{log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def c_store(datasets: list[Any], port: int, called: str, calling: str = "TESTSCU") -> list[int]:
    """C-STORE ``datasets`` to 127.0.0.1:``port`` as ``calling``; the status of each (-1: not sent)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    for ds in datasets:
        syntax = ds.file_meta.TransferSyntaxUID
        if (ds.SOPClassUID, syntax) not in [
            (c.abstract_syntax, c.transfer_syntax[0]) for c in ae.requested_contexts
        ]:
            ae.add_requested_context(ds.SOPClassUID, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise AssertionError(f"no association with {called} on port {port}")
    try:
        return [int(s.Status) if (s := assoc.send_c_store(ds)) else -1 for ds in datasets]
    finally:
        assoc.release()


def wait_for(predicate, timeout: float, what: str, every: float = 0.5) -> Any:
    """Poll ``predicate()`` until it returns something truthy (returned), else fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
