"""`cxr node` against a real PACS (Orthanc on 127.0.0.1, started here): the real DICOMs of
../shared/data/dicom go in by DICOMweb (watch) and by C-STORE (listen); a Comprehensive SR and a heatmap
Secondary Capture come back into each image's study, re-read with pydicom, the SR's probabilities those of
`cxrlab.predict` on the same file. Bad input on the network: an AE title not allowed, a non-image and a
truncated object over C-STORE, an instance Orthanc cannot deliver and a PACS that is down; and no patient
name or id in any log or record the node writes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA, run_cli
from tests.deploy.pacs import c_store, free_port, start_orthanc, stop, wait_for

try:
    import pydicom
except ImportError:  # the skip below says so (a failure under CXRLAB_REQUIRE_ALL=1)
    pydicom = None

DICOM_DIR = DATA / "dicom"


@pytest.fixture(scope="module", autouse=True)
def _pacs_extra() -> None:
    """Skipped per test (not at collection, which CXRLAB_REQUIRE_ALL=1 could not turn into a failure)."""
    for name in ("pydicom", "pynetdicom", "highdicom", "dicomweb_client"):
        pytest.importorskip(name, reason=f"the [pacs] extra ({name}) is not installed")


@pytest.fixture(scope="module")
def dicom_files() -> list[Path]:
    if not DICOM_DIR.is_dir():
        pytest.skip(f"{DICOM_DIR} not found (see shared/data/README.md); CI always has it")
    return sorted(DICOM_DIR.glob("*.dcm"))


@pytest.fixture(scope="module")
def identities(dicom_files) -> list[str]:
    """The real files' PatientName and PatientID values: they must never reach a log or a record."""
    values = set()
    for f in dicom_files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        values |= {str(ds.get("PatientName") or ""), str(ds.get("PatientID") or "")}
    values.discard("")
    assert values
    return sorted(values)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, dicom_files):
    """Orthanc holding the real files, stored by C-STORE (the first of two files with one SOP Instance
    UID is kept: Orthanc does not overwrite)."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"), node_port=free_port())
    try:
        statuses = c_store([pydicom.dcmread(f) for f in dicom_files], server.dicom_port, server.aet)
        assert all(s == 0 for s in statuses), statuses
        yield server
    finally:
        stop(server.proc)


def _first_file_by_uid(files: list[Path]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        out.setdefault(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID), f)
    return out


def _outputs_of(orthanc, source_uid: str) -> tuple[list, list]:
    """The SRs (pydicom datasets) in Orthanc that reference ``source_uid``, and the SCs they reference."""
    from cxrlab.deploy.dicom_out import read_report

    srs, scs = [], []
    for inst in orthanc.instances("SR"):
        ds = pydicom.dcmread(io.BytesIO(orthanc.file(inst["ID"])))
        report = read_report(ds)
        if report.get("source") == source_uid:
            srs.append((ds, report))
    for inst in orthanc.instances("OT"):
        ds = pydicom.dcmread(io.BytesIO(orthanc.file(inst["ID"])))
        if any(str(ds.SOPInstanceUID) == r["heatmap"] for _, r in srs):
            scs.append(ds)
    return srs, scs


def _no_identity_in(folder: Path, identities: list[str], extra: str = "") -> None:
    texts = {p.name: p.read_text(errors="replace") for p in folder.iterdir() if p.is_file()}
    texts["console"] = extra
    for name, text in texts.items():
        for value in identities:
            assert value not in text, f"a patient identifier of the real files appears in {name}"


def test_watch_orthanc_end_to_end(orthanc, small_run, dicom_files, identities, tmp_path):
    """QIDO-RS finds the 3 distinct real instances, WADO-RS fetches them, STOW-RS stores an SR and a
    heatmap SC into each study; the SR's numbers are `cxrlab.predict`'s on the same file."""
    import cxrlab
    from cxrlab.deploy.dicom_out import NOT_ASSESSED, ood_verdict
    from cxrlab.deploy.export import run_id
    from cxrlab.evaluation.inference import load_run

    out = tmp_path / "node"
    proc = run_cli("node", str(small_run), "--out", str(out), "--watch", orthanc.dicomweb, "--once",
                   "--backoff", "0.2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    sources = _first_file_by_uid(dicom_files)
    assert len(sources) == 3
    loaded = load_run(small_run)
    expected = {r["image"]: r for r in cxrlab.predict(small_run, [str(f) for f in sources.values()])}
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["instance"] for r in results) == sorted(sources)
    assert not (out / "failures.jsonl").exists()
    for uid, path in sources.items():
        src = pydicom.dcmread(path, stop_before_pixels=True)
        srs, scs = _outputs_of(orthanc, uid)
        assert len(srs) == 1 and len(scs) == 1, (uid, len(srs), len(scs))
        (sr, report), sc = srs[0], scs[0]
        want = expected[str(path)]
        for cls in loaded.classes:
            assert abs(report["probabilities"][cls] - want["probabilities"][cls]) <= 1e-4
        op = loaded.meta["operating_point"]
        assert report["threshold"] == pytest.approx(op["threshold"], abs=1e-6)
        assert report["version"] == run_id(loaded) and report["algorithm"] == f"cxrlab {loaded.meta['model']}"
        assert report["ood_verdict"] == ood_verdict(want.get("ood"))
        if want.get("ood") is None:
            assert report["ood_verdict"] == NOT_ASSESSED
        elif not want["ood"]["in_distribution"]:
            assert report["finding"].startswith("outside what this model was validated on")
        else:
            assert report["finding"] == want["class"]
        for ds in (sr, sc):  # the study's identity, as DICOM requires
            assert ds.StudyInstanceUID == src.StudyInstanceUID
            assert ds.PatientID == src.PatientID and str(ds.PatientName) == str(src.PatientName)
        assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
        assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert sc.pixel_array.ndim == 3 and sc.pixel_array.shape[2] == 3 and sc.pixel_array.std() > 0
        study = orthanc.get(f"/instances/{_orthanc_id(orthanc, uid)}/study")["ID"]
        in_study = {i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.get(f"/studies/{study}/instances")}
        assert {uid, str(sr.SOPInstanceUID), str(sc.SOPInstanceUID)} <= in_study
    _no_identity_in(out, identities, proc.stdout + proc.stderr)
    # a second poll finds nothing new: the node's own SR/SC and the images it did are skipped
    again = run_cli("node", str(small_run), "--out", str(out), "--watch", orthanc.dicomweb, "--once")
    assert again.returncode == 0 and len((out / "results.jsonl").read_text().splitlines()) == 3


def _orthanc_id(orthanc, sop_uid: str) -> str:
    found = orthanc.post("/tools/lookup", sop_uid.encode())
    return next(f["ID"] for f in found if f["Type"] == "Instance")


@pytest.fixture(scope="module")
def listening(orthanc, small_run, tmp_path_factory):
    """`cxr node` as a real process: C-STORE in on Orthanc's "cxrlab" port from ORTHANC or TESTSCU,
    results back to Orthanc by C-STORE."""
    out = tmp_path_factory.mktemp("listen") / "node"
    args = [sys.executable, "-m", "cxrlab", "node", str(small_run), "--out", str(out),
            "--port", str(orthanc.node_port), "--ae-title", "CXRLAB", "--allow", "ORTHANC,TESTSCU",
            "--pacs", f"127.0.0.1:{orthanc.dicom_port}:{orthanc.aet}", "--backoff", "0.2"]  # fmt: skip
    console = out.parent / "console.txt"
    with open(console, "wb") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        wait_for(lambda: (out / "node.log").is_file() and "listening" in (out / "node.log").read_text()
                 or proc.poll() is not None, 180, "the node to listen")  # fmt: skip
        assert proc.poll() is None, console.read_text()[-3000:]
        yield out, proc, console
    finally:
        stop(proc)


def _log_lines(out: Path, needle: str) -> list[str]:
    return [line for line in (out / "node.log").read_text().splitlines() if needle in line]


def test_listen_orthanc_pushes_a_study(listening, orthanc, dicom_files):
    """Orthanc sends a study to the node (C-STORE, AE ORTHANC); the SR and SC arrive in that study."""
    out, _, _ = listening
    rsna = next(f for f in dicom_files if f.name.startswith("rsna_"))
    uid = str(pydicom.dcmread(rsna, stop_before_pixels=True).SOPInstanceUID)
    before = len(_outputs_of(orthanc, uid)[0])
    study = orthanc.get(f"/instances/{_orthanc_id(orthanc, uid)}/study")["ID"]
    orthanc.post("/modalities/cxrlab/store", {"Resources": [study], "Synchronous": True})
    wait_for(lambda: len(_outputs_of(orthanc, uid)[0]) > before, 180, "the SR of the pushed study")
    srs, scs = _outputs_of(orthanc, uid)
    assert len(scs) == len(srs) == before + 1
    src = pydicom.dcmread(rsna, stop_before_pixels=True)
    for ds in [sr for sr, _ in srs] + scs:
        assert (ds.StudyInstanceUID, ds.PatientID) == (src.StudyInstanceUID, src.PatientID)
    assert _log_lines(out, "C-STORE from ORTHANC")
    if before:  # the study held an SR and a heatmap of the watch test: sent along, accepted and skipped
        assert len(_log_lines(out, "cxrlab made, accepted and skipped")) >= 2


def test_listen_rejects_an_ae_title_not_allowed(listening, orthanc):
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    out, proc, _ = listening
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", orthanc.node_port, ae_title="CXRLAB")
    assert assoc.is_rejected and not assoc.is_established
    wait_for(lambda: _log_lines(out, "INTRUDER"), 30, "the rejection's log line")
    assert len(_log_lines(out, "INTRUDER")) == 1 and "rejected" in _log_lines(out, "INTRUDER")[0]
    assert proc.poll() is None


def test_listen_bad_objects_fail_and_the_node_keeps_serving(listening, orthanc, dicom_files):
    """A non-image object and a truncated image get failure status 0xC000 and one log line each; the
    MONOCHROME1 file sent next (Orthanc kept its twin) is processed into an SR in Orthanc."""
    from pydicom.uid import generate_uid

    out, proc, _ = listening
    nih = next(f for f in dicom_files if f.name.startswith("nihgcp_"))
    no_pixels = pydicom.dcmread(nih)
    del no_pixels.PixelData
    no_pixels.SOPInstanceUID = generate_uid()
    no_pixels.file_meta.MediaStorageSOPInstanceUID = no_pixels.SOPInstanceUID
    truncated = pydicom.dcmread(nih)
    truncated.PixelData = truncated.PixelData[: len(truncated.PixelData) // 3]
    truncated.SOPInstanceUID = generate_uid()
    truncated.file_meta.MediaStorageSOPInstanceUID = truncated.SOPInstanceUID
    mono1 = pydicom.dcmread(next(f for f in dicom_files if "MONOCHROME1" in f.name))
    statuses = c_store([no_pixels, truncated, mono1], orthanc.node_port, "CXRLAB")
    assert statuses == [0xC000, 0xC000, 0x0000]
    for bad in (no_pixels, truncated):
        lines = _log_lines(out, str(bad.SOPInstanceUID))
        assert len(lines) == 1 and "refused (status 0xC000)" in lines[0], lines
    results = out / "results.jsonl"
    wait_for(lambda: results.is_file() and any(
        json.loads(line)["instance"] == str(mono1.SOPInstanceUID) and "TESTSCU" in json.loads(line)["origin"]
        for line in results.read_text().splitlines()), 180, "the MONOCHROME1 image's result")  # fmt: skip
    assert proc.poll() is None
    assert len(_outputs_of(orthanc, str(mono1.SOPInstanceUID))[0]) >= 1


def test_undeliverable_instance_and_pacs_down_are_retried_then_reported(
    orthanc, small_run, dicom_files, tmp_path
):
    """An instance QIDO lists but Orthanc can no longer deliver (deleted before WADO-RS), results for a
    PACS that does not answer, and a DICOMweb server that is down: retried with backoff (bounded), then a
    log line and a failures.jsonl entry each; nothing is lost silently and the node goes on."""
    from pydicom.uid import generate_uid

    from cxrlab.deploy.node import Node, NodeOptions, Peer, _Job, setup_logging
    from cxrlab.evaluation.inference import image_run

    loaded = image_run(small_run)
    out = tmp_path / "node"
    setup_logging(out)
    copy = pydicom.dcmread(next(f for f in dicom_files if f.name.startswith("rsna_")))
    copy.StudyInstanceUID, copy.SeriesInstanceUID, copy.SOPInstanceUID = (
        generate_uid(),
        generate_uid(),
        generate_uid(),
    )
    copy.file_meta.MediaStorageSOPInstanceUID = copy.SOPInstanceUID
    node = Node(loaded, NodeOptions(out=out, watch=orthanc.dicomweb, retries=2, backoff_s=0.05))
    node.seen.update(i["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.instances())  # done elsewhere
    assert c_store([copy], orthanc.dicom_port, orthanc.aet) == [0]
    found = node.poll_once()
    assert [u[2] for u in found] == [str(copy.SOPInstanceUID)]
    orthanc.delete(f"/instances/{_orthanc_id(orthanc, str(copy.SOPInstanceUID))}")
    job = node.jobs.get()
    assert node.process(job) is None
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert failures[-1]["stage"] == "fetch" and failures[-1]["instance"] == str(copy.SOPInstanceUID)
    log = (out / "node.log").read_text()
    assert log.count("retrying in") == 2 and "FAILED (fetch)" in log
    assert str(copy.SOPInstanceUID) in node.seen  # reported once, not retried at every poll

    closed = free_port()  # nothing listens there: a PACS that is down
    opts = NodeOptions(out=out, watch=f"http://127.0.0.1:{closed}/dicom-web",
                       pacs=Peer("127.0.0.1", closed, "DOWN"), retries=1, backoff_s=0.05)  # fmt: skip
    down = Node(loaded, opts)
    assert down.poll_once() is None
    assert "cannot list instances" in (out / "node.log").read_text()
    from cxrlab.deploy.dicom_out import to_bytes

    assert down.process(_Job(origin="test", data=to_bytes(copy))) is None
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert failures[-1]["stage"] == "store" and "DOWN" in failures[-1]["reason"]
    # an unexpected error whose text quotes the header: the patient's values are scrubbed before logging
    from cxrlab.deploy.node import _identity

    job = _Job(origin="test", ids={"instance": str(copy.SOPInstanceUID)}, identity=_identity(copy))
    down._failed(job, "process", f"ValueError: invalid value {copy.PatientName!s} / {copy.PatientID}")
    for text in ((out / "failures.jsonl").read_text(), (out / "node.log").read_text()):
        assert str(copy.PatientID) not in text and "[patient data removed]" in text


def test_node_writes_no_patient_identity(listening, identities):
    """After every test above: the listening node's log, records and console hold no patient name or id."""
    out, _, console = listening
    _no_identity_in(out, identities, console.read_text(errors="replace"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "needs --port"),
        (("--port", "11112"), "--allow"),
        (("--port", "11112", "--allow", "A"), "results go to --pacs"),
        (("--port", "11112", "--allow", "A", "--pacs", "nohost"), "HOST:PORT:AET"),
        (("--port", "11112", "--allow", "A", "--pacs", "h:1:X", "--once"), "--once"),
    ],
)
def test_node_options_are_checked_in_one_line(small_run, tmp_path, args, message):
    proc = run_cli("node", str(small_run), "--out", str(tmp_path / "o"), "--no-heatmap", *args)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_sr_is_valid_for_dcmtk_and_says_outside_when_the_guard_flags(small_run, dicom_files, tmp_path):
    """DCMTK's dsrdump (an outside SR reader) parses the SR without a warning, in-distribution and
    out-of-distribution alike; a flagged image's Finding is 'outside what this model was validated on'."""
    import shutil

    import cxrlab
    from cxrlab.deploy.dicom_out import OUTSIDE, read_report, structured_report, to_bytes
    from cxrlab.evaluation.inference import load_run

    dsrdump = shutil.which("dsrdump")
    if dsrdump is None:
        pytest.skip("DCMTK's dsrdump is not installed (apt-get install dcmtk)")
    loaded = load_run(small_run)
    source = pydicom.dcmread(
        next(f for f in dicom_files if f.name.startswith("nihgcp_")), stop_before_pixels=True
    )
    result = cxrlab.predict(small_run, [str(dicom_files[0])])[0]
    flagged = {**result, "ood": {"in_distribution": False, "score": 30.0, "threshold": 12.0,
                                 "reasons": ["lateral view"]}}  # fmt: skip
    for name, res in (("as_predicted", result), ("flagged", flagged)):
        sr = structured_report(
            source, res, classes=loaded.classes, operating_point=loaded.meta["operating_point"],
            model="small_cnn", version="v", series_uid=pydicom.uid.generate_uid(),
            sop_uid=pydicom.uid.generate_uid(), manufacturer="cxrlab", description="cxrlab findings",
        )  # fmt: skip
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(to_bytes(sr))
        proc = subprocess.run([dsrdump, str(path)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
        assert "Comprehensive SR Document" in proc.stdout and "probability of" in proc.stdout
        report = read_report(pydicom.dcmread(path))
        assert report["probabilities"] == pytest.approx(res["probabilities"], abs=1e-6)
    assert report["finding"].startswith(OUTSIDE) and report["ood_verdict"].startswith(OUTSIDE)
    assert "lateral view" in report["ood_verdict"]


def test_node_once_with_the_server_down_and_a_busy_port_exit_with_one_line(small_run, tmp_path):
    import socket

    closed = free_port()
    proc = run_cli("node", str(small_run), "--out", str(tmp_path / "a"), "--no-heatmap", "--once",
                   "--watch", f"http://127.0.0.1:{closed}/dicom-web")  # fmt: skip
    assert proc.returncode != 0 and "cannot list the instances" in proc.stderr
    assert "Traceback" not in proc.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("node", str(small_run), "--out", str(tmp_path / "b"), "--no-heatmap",
                       "--port", str(port), "--allow", "A", "--pacs", f"127.0.0.1:{closed}:X")  # fmt: skip
    assert proc.returncode != 0 and f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr
