"""DICOM input: the 4 real radiographs of ../shared/data/dicom, DICOMs written here with pydicom around their
real pixel data (12/16-bit, rescale, window, VOI LUT, compressed transfer syntaxes) and bad objects
(multi-frame, no pixel data, truncated, unsupported syntax), a folder of .dcm files trained, predicted and
audited through the real CLI, and the privacy check: no real Patient ID or name in any file written."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from cxrlab.data.dicom import DicomError, decode_dataset, is_dicom, patient_group, read_dicom, read_header
from cxrlab.data.images import ImageReadError, is_image_file, load_gray, read_info
from cxrlab.data.index import discover
from tests.conftest import DATA, run_cli

DICOM_DIR = DATA / "dicom"
RSNA = "rsna_c64d5667-a776-4f95-9e21-bfabafb07740.dcm"
SIIM = "siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
SIIM_M1 = "siim_header_edited_MONOCHROME1.dcm"
NIH = "nihgcp_1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm"
REAL = (RSNA, SIIM, SIIM_M1, NIH)
MULTI_FRAME = "multi-frame DICOM (2 frames); give single-frame radiographs (one per file)"


@pytest.fixture(scope="session")
def dicom_dir() -> Path:
    if not (DICOM_DIR / SIIM).is_file():
        pytest.skip(f"real DICOMs not found at {DICOM_DIR} (see shared/data/README.md); CI always has them")
    return DICOM_DIR


@pytest.fixture(scope="session")
def base(dicom_dir) -> np.ndarray:
    """The SIIM radiograph's real 8-bit pixels at 256 x 256 (every 4th pixel)."""
    return pydicom.dcmread(dicom_dir / SIIM).pixel_array[::4, ::4].copy()


@pytest.fixture(scope="session")
def identities(dicom_dir) -> set[str]:
    """The real Patient IDs and names of the test files (what must never reach a run folder)."""
    found: set[str] = set()
    for name in REAL:
        ds = pydicom.dcmread(dicom_dir / name, stop_before_pixels=True)
        found |= {str(ds.get("PatientID") or ""), str(ds.get("PatientName") or "")}
    return {v for v in found if len(v) >= 6}


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    bits_stored: int = 8,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    patient: str = "GEN-PATIENT-0001",
    frames: int = 1,
    syntax: UID = ExplicitVRLittleEndian,
    **attributes,
) -> Path:
    """A DX radiograph around ``pixels`` (uint8/uint16/int16; frames stacked on axis 0 when > 1)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName, ds.PatientBirthDate = patient, "Doe^Jane^Gen", "19500101"
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_stored, bits_stored - 1, int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


# --------------------------------------------------------------------------- real files


@pytest.mark.parametrize("name", REAL)
def test_real_dicoms_decode(dicom_dir, name):
    image = read_dicom(dicom_dir / name)
    assert image.shape == (1024, 1024) and image.dtype == np.uint8
    assert np.array_equal(decode_dataset(pydicom.dcmread(dicom_dir / name)), image)  # in memory: the same
    assert image.std() > 20 and image.max() >= 250  # a full-range radiograph, not a blank
    assert load_gray(dicom_dir / name, 64).shape == (64, 64)
    info = read_info(dicom_dir / name)
    assert (info.format, info.width, info.height, info.bit_depth) == ("DICOM", 1024, 1024, 8)


def test_monochrome1_is_the_inverse_of_its_monochrome2_twin(dicom_dir):
    m2, m1 = read_dicom(dicom_dir / SIIM), read_dicom(dicom_dir / SIIM_M1)
    assert _corr(255 - m1, m2) > 0.99 and np.abs((255 - m1.astype(int)) - m2).max() <= 2
    assert _corr(m1, m2) < -0.99  # really inverted, not decoded twice the same way
    assert read_header(dicom_dir / SIIM_M1).photometric == "MONOCHROME1"


def test_header_attributes_without_identity(dicom_dir):
    head = read_header(dicom_dir / RSNA)
    assert head.attributes == {
        "view_position": "AP", "modality": "CR", "manufacturer": None, "body_part": "CHEST",
        "photometric": "MONOCHROME2", "bits_stored": 8, "pixel_spacing": "0.168x0.168",
        "transfer_syntax": "JPEG Baseline (Process 1)",
    }  # fmt: skip
    assert head.patient_id == "c64d5667-a776-4f95-9e21-bfabafb07740"
    assert "PatientName" not in repr(head) and head.patient_id not in repr(head)


# --------------------------------------------------------------------------- generated around real pixels


def _stored_window(values: np.ndarray) -> np.ndarray:
    """The documented rule for > 8-bit images without a VOI: the 0.5–99.5 percentiles → 0–255."""
    lo, hi = np.percentile(values.astype(np.float64), [0.5, 99.5])
    return np.clip(np.floor((values - lo) / (hi - lo) * 255 + 0.5), 0, 255)


def test_12_bit_with_rescale(tmp_path, base):
    stored = base.astype(np.uint16) * 16  # 0…4080 in 12 bits
    path = write_dicom(tmp_path / "a.dcm", stored, 12, RescaleSlope=0.5, RescaleIntercept=-1024)
    out = read_dicom(path)
    # no VOI: windowed on the percentiles of the rescaled values (an affine rescale changes nothing)
    assert np.abs(out.astype(int) - _stored_window(stored * 0.5 - 1024)).max() <= 1
    assert np.array_equal(out, read_dicom(write_dicom(tmp_path / "plain.dcm", stored, 12)))


def test_16_bit_signed_with_rescale(tmp_path, base):
    stored = (base.astype(np.int32) * 256 - 32768).astype(np.int16)
    path = write_dicom(tmp_path / "b.dcm", stored, 16, signed=True, RescaleSlope=2, RescaleIntercept=100)
    out = read_dicom(path)
    assert np.abs(out.astype(int) - _stored_window(stored * 2.0 + 100)).max() <= 1
    assert _corr(out, base) > 0.99


def test_12_bit_values_in_16_bits_keep_their_contrast(tmp_path, base):
    """Bits Stored 16 holding 12-bit values: windowed on the stored values, not on 0…65535 (which kept
    17 grey levels)."""
    stored = base.astype(np.uint16) * 16
    out = read_dicom(write_dicom(tmp_path / "c.dcm", stored, 16))
    assert np.abs(out.astype(int) - _stored_window(stored)).max() <= 1
    assert len(np.unique(out)) >= min(200, len(np.unique(base)) - 5) and _corr(out, base) > 0.99


def test_histogram_percentiles_equal_numpys():
    """The fast window (a histogram of the stored integers, through the rescale) is np.percentile's."""
    from pydicom.pixels import apply_modality_lut

    from cxrlab.data.dicom import _integer_window, stored_window

    rng = np.random.default_rng(3)
    for dtype, slope, intercept in ((np.uint16, 1, 0), (np.int16, 2.5, -1024), (np.uint16, -0.5, 100)):
        info = np.iinfo(dtype)
        arr = rng.integers(max(info.min, -3000), min(info.max, 3000), (97, 89)).astype(dtype)
        arr[:3] = arr.max()  # a saturated band, as detectors give
        ds = Dataset()
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelRepresentation, ds.BitsStored = int(dtype == np.int16), 16
        fast = _integer_window(arr, ds)
        assert fast is not None
        assert np.allclose(fast, stored_window(apply_modality_lut(arr, ds)), rtol=0, atol=1e-6)


def test_8_bit_keeps_its_stored_values(tmp_path, base):
    """8 bits stored, no VOI: the stored values are the image (no percentile stretch)."""
    dim = (base // 2).astype(np.uint8)  # a dim 8-bit image stays dim
    assert np.array_equal(read_dicom(write_dicom(tmp_path / "d.dcm", dim, 8)), dim)


def test_window_center_width(tmp_path, base):
    stored = base.astype(np.uint16) * 16
    center, width = 2048.0, 1024.0
    path = write_dicom(tmp_path / "w.dcm", stored, 12, WindowCenter=center, WindowWidth=width)
    out = read_dicom(path).astype(int)
    expected = np.clip((stored - (center - 0.5)) / (width - 1) + 0.5, 0, 1) * 255  # PS3.3 C.11.2.1.2.1
    assert np.abs(out - np.rint(expected)).max() <= 1
    assert (out[stored < center - width / 2] == 0).all() and (out[stored > center + width / 2] == 255).all()


def test_voi_lut_sequence_wins_over_window(tmp_path, base):
    stored = base.astype(np.uint16) * 16
    lut = np.rint(np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = lut.tobytes()  # OW
    seq = pydicom.Sequence([item])
    path = write_dicom(tmp_path / "v.dcm", stored, 12, VOILUTSequence=seq, WindowCenter=100, WindowWidth=10)
    out = read_dicom(path).astype(int)
    assert np.abs(out - np.rint(lut[stored] / 65535 * 255)).max() <= 1


def test_generated_monochrome1_inverted(tmp_path, base):
    out = read_dicom(write_dicom(tmp_path / "m1.dcm", base, 8, photometric="MONOCHROME1"))
    assert np.array_equal(out, 255 - base)


def test_12_bit_levels_are_rounded_to_8_bits(tmp_path):
    # every 12-bit level once, no VOI: the percentile window, each level rounded half up
    stored = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    out = read_dicom(write_dicom(tmp_path / "ramp.dcm", stored, 12)).astype(int)
    assert np.abs(out - _stored_window(stored)).max() <= 1 and (out == _stored_window(stored)).mean() > 0.99
    assert out.min() == 0 and out.max() == 255 and (np.diff(out.ravel()) >= 0).all()


def test_monochrome1_through_rescale_and_window_is_inverted(tmp_path, base):
    """12-bit MONOCHROME1 (not the 8-bit shortcut): through the rescale, and through a window, each image
    is the exact inverse of its MONOCHROME2 twin."""
    stored = base.astype(np.uint16) * 16
    for extra in (
        {"RescaleSlope": 0.5, "RescaleIntercept": -1024},
        {"WindowCenter": 2048.0, "WindowWidth": 1024.0},
    ):
        m2 = read_dicom(write_dicom(tmp_path / "m2.dcm", stored, 12, **extra))
        m1 = read_dicom(write_dicom(tmp_path / "m1.dcm", stored, 12, photometric="MONOCHROME1", **extra))
        assert np.array_equal(m1.astype(int), 255 - m2.astype(int)), extra
        assert m2.std() > 20  # a real radiograph's levels, not a blank


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_compressed_transfer_syntaxes(tmp_path, base, syntax):
    stored = base.astype(np.uint16) * 16
    out = read_dicom(write_dicom(tmp_path / "z.dcm", stored, 12, syntax=syntax))
    assert read_header(tmp_path / "z.dcm").transfer_syntax == syntax
    assert np.array_equal(out, read_dicom(write_dicom(tmp_path / "u.dcm", stored, 12)))


# --------------------------------------------------------------------------- refused, one line


def _refused(path: Path) -> str:
    with pytest.raises(DicomError) as caught:
        read_dicom(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    with pytest.raises(ImageReadError) as again:  # the reader every command uses: same reason
        load_gray(path, 32)
    assert str(again.value) == caught.value.reason
    return caught.value.reason


def test_multi_frame_refused(tmp_path, base):
    path = write_dicom(tmp_path / "mf.dcm", np.stack([base, base]), 8, frames=2)
    assert _refused(path) == MULTI_FRAME


def test_no_pixel_data_refused(tmp_path):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = BasicTextSRStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID, ds.PatientID, ds.Modality = meta, BasicTextSRStorage, "X", "SR"
    ds.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    reason = _refused(tmp_path / "sr.dcm")
    assert reason == "no pixel data: a non-image DICOM object (Basic Text SR Storage); give image files"


@pytest.mark.parametrize("name", [NIH, RSNA], ids=["uncompressed", "jpeg"])
def test_truncated_refused(tmp_path, dicom_dir, name):
    data = (dicom_dir / name).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
    assert _refused(tmp_path / "cut.dcm").startswith("truncated DICOM file: the header describes an image")


def test_garbage_and_unsupported_syntax_refused(tmp_path, base):
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 200 + b"not dicom at all" * 10)
    assert "DICOM" in _refused(tmp_path / "junk.dcm")
    path = write_dicom(tmp_path / "mpeg.dcm", base, 8)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2 video: no decoder exists
    ds.PixelData = encapsulate([base.tobytes()])
    ds.save_as(path)
    reason = _refused(path)
    assert (
        reason == "transfer syntax MPEG2 Main Profile / Main Level is not supported (no pixel-data decoder)"
    )


def test_detection_by_extension_and_preamble(tmp_path, dicom_dir, base):
    for name in ("IM0001", "1.2.840.113619.2.55.3.604688"):  # no ending / UID-named PACS export
        shutil.copy(dicom_dir / SIIM, tmp_path / name)
        assert is_image_file(tmp_path / name) and is_dicom(tmp_path / name)
        assert load_gray(tmp_path / name, 32).shape == (32, 32)
    (tmp_path / "README").write_text("notes")
    (tmp_path / "scan.DICOM").write_bytes(b"")
    assert not is_image_file(tmp_path / "README") and not is_image_file(tmp_path / "missing")
    assert is_image_file(tmp_path / "scan.DICOM")  # by name; decoding then says why it is unusable
    with pytest.raises(ImageReadError):
        load_gray(tmp_path / "scan.DICOM", 32)


# --------------------------------------------------------------------------- index, audit, CLI, privacy


def _dataset(root: Path, dicom_dir: Path, base: np.ndarray, per_class: int = 12) -> Path:
    """Two classes of DICOMs: the 4 real files (2 + 2) plus generated 12/16-bit variants around real
    pixels, one patient each; class a from manufacturer ACME (AP), class b from ZETA (PA)."""
    rng = np.random.default_rng(0)
    for c, (cls, maker, view) in enumerate((("a", "ACME", "AP"), ("b", "ZETA", "PA"))):
        folder = root / cls
        folder.mkdir(parents=True)
        for k, name in enumerate(REAL[2 * c : 2 * c + 2]):
            shutil.copy(dicom_dir / name, folder / f"real{k}.dcm")  # file names: not the patient ids
        for i in range(per_class):
            y, x = rng.integers(0, 128, 2)
            crop = base[y : y + 128, x : x + 128].astype(np.uint16)
            bits = (12, 16)[i % 2]
            stored = crop * (16 if bits == 12 else 256) + rng.integers(0, 8, crop.shape, dtype=np.uint16)
            write_dicom(folder / f"gen{i:02d}.dcm", stored, bits, patient=f"GEN-{cls}-{i:04d}",
                        Manufacturer=maker, ViewPosition=view, RescaleSlope=1,
                        RescaleIntercept=0)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def dicom_data(tmp_path_factory, dicom_dir, base) -> Path:
    return _dataset(tmp_path_factory.mktemp("dicom") / "data", dicom_dir, base)


def test_index_groups_by_hashed_patient_id(dicom_data):
    index = discover(dicom_data)
    real = {Path(s.path).name: s.group for s in index.samples if Path(s.path).name.startswith("real")}
    siim = [s.group for s in index.samples if s.path.endswith(("a/real1.dcm", "b/real0.dcm"))]
    assert len(set(siim)) == 1  # SIIM and its MONOCHROME1 twin: one patient, across two classes
    assert all(g.startswith("pid-") and len(g) == 20 for g in real.values())
    assert {s.group for s in index.samples} == {patient_group(p) for p in _patients(index)}
    attrs = index.dicom[str(dicom_data / "a" / "gen00.dcm")]
    assert attrs["manufacturer"] == "ACME" and attrs["bits_stored"] == 12 and attrs["view_position"] == "AP"
    raw = discover(dicom_data, dicom_patient_ids="raw")
    assert "GEN-a-0000" in {s.group for s in raw.samples}


def _patients(index) -> set[str]:
    return {read_header(s.path).patient_id for s in index.samples}  # type: ignore[misc]


def _grep(folder: Path, secrets: set[str]) -> list[str]:
    """Files under ``folder`` whose bytes contain any of ``secrets`` (every file, binary ones too)."""
    hits = []
    for file in folder.rglob("*"):
        if file.is_file():
            data = file.read_bytes()
            hits += [f"{file}: {s}" for s in secrets if s.encode() in data]
    return hits


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory, dicom_data) -> Path:
    run = tmp_path_factory.mktemp("runs") / "dicom-run"
    run_cli("train", "--data", str(dicom_data), "--model", "small_cnn", "--image-size", "32", "--epochs", "1",
            "-q", "--no-tensorboard", "--out", str(run), "--set", "eval.tsne=false",
            "--set", "eval.bootstrap=50", check=True)  # fmt: skip
    return run


def test_train_predict_and_privacy(dicom_run, dicom_data, dicom_dir, identities, tmp_path, base):
    metrics = json.loads((dicom_run / "metrics.json").read_text())
    assert metrics["test"]["n"] >= 4
    splits = (dicom_run / "splits.csv").read_text()
    assert splits.count(".dcm") == 28 and "pid-" in splits
    shutil.copy(dicom_dir / RSNA, tmp_path / "x.dcm")
    shutil.copy(dicom_dir / NIH, tmp_path / "IM0002")  # no file ending: found by its DICM marker
    write_dicom(tmp_path / "mf.dcm", np.stack([base, base]), 8, frames=2)
    (tmp_path / "cut.dcm").write_bytes((dicom_dir / RSNA).read_bytes()[:5000])
    proc = run_cli("predict", str(dicom_run), str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    result = {Path(r["image"]).name: r for r in json.loads(proc.stdout)}
    assert result["x.dcm"]["class"] in ("a", "b") and result["IM0002"]["class"] in ("a", "b")
    assert result["mf.dcm"]["error"] == MULTI_FRAME
    assert result["cut.dcm"]["error"].startswith("truncated DICOM file")
    assert f"unreadable: {tmp_path / 'mf.dcm'}: multi-frame DICOM (2 frames)" in proc.stderr
    proc = run_cli("evaluate", str(dicom_run))  # re-derives the carved test split: same hashed groups
    assert proc.returncode == 0, proc.stderr
    test_split = {r["path"] for r in csv.DictReader(io.StringIO(splits)) if r["split"] == "test"}
    with (dicom_run / "evaluation" / "predictions.csv").open() as fh:
        assert {r["path"] for r in csv.DictReader(fh)} == test_split
    generated = {f"GEN-{c}-{i:04d}" for c in "ab" for i in range(12)} | {"Doe^Jane^Gen", "19500101"}
    assert identities and not _grep(dicom_run, identities | generated)


def test_audit_reports_manufacturer_and_view_shortcut(dicom_data, identities, tmp_path):
    out = tmp_path / "audit"
    proc = run_cli("audit", str(dicom_data), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "audit.json").read_text())
    meta = result["metadata_baseline"]
    assert {"manufacturer", "view_position", "transfer_syntax"} <= set(meta["features"])
    top = {s["property"] for s in meta["signal"][:4]}
    assert "manufacturer" in top and "view_position" in top
    assert any("manufacturer" in w and "without any pixel" in w for w in result["warnings"])
    assert result["properties"]["a"]["manufacturer"] == {"ACME": 12, "unknown": 2}
    assert result["patients"]["images_without_id"] == 0
    assert "manufacturer" in (out / "audit.html").read_text()
    generated = {f"GEN-{c}-{i:04d}" for c in "ab" for i in range(12)} | {"Doe^Jane^Gen", "19500101"}
    assert not _grep(out, identities | generated)


def test_label_file_pointing_at_dicoms(dicom_data, tmp_path):
    from cxrlab.config import LabelsConfig

    rows = ["image,finding"] + [f"{c}/gen{i:02d}.dcm,{c}" for c in "ab" for i in range(12)]
    rows += ["a/real0.dcm,a", "b/real1.dcm,b"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    cfg = LabelsConfig(file=str(tmp_path / "labels.csv"), image_column="image", label_column="finding")
    index = discover(dicom_data, labels=cfg)
    assert index.layout == "labels" and len(index.samples) == 26 and len(index.dicom) == 26
    assert all(s.group.startswith("pid-") for s in index.samples)  # no patient column: the header's id
    assert load_gray(index.samples[0].path, 32).shape == (32, 32)


def test_cache_key_of_a_dicom_follows_the_decode_version(dicom_dir, tmp_path, monkeypatch):
    """A new DICOM pixel pipeline re-decodes DICOMs (never serves the old decode); other images keep keys."""
    from cxrlab.data import cache

    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG")
    before = cache.file_key(str(dicom_dir / SIIM), 64, "squash"), cache.file_key(str(png), 64, "squash")
    monkeypatch.setattr(cache, "DICOM_DECODE_VERSION", "test")
    after = cache.file_key(str(dicom_dir / SIIM), 64, "squash"), cache.file_key(str(png), 64, "squash")
    assert before[0] != after[0] and before[1] == after[1]
