"""Oracle for DICOM pixels: every file with pixel data among pydicom's own test files is decoded by cxrlab
to within one grey level of a reference computed here with plain pydicom, or refused in one line.

The files: ``pydicom/data/test_files`` (recursively, the DICOMDIR test tree included) and any of pydicom's
downloadable test files already in its download cache. ``pydicom.data.get_testdata_files()`` is not called:
it downloads the ~79 online files. Nothing is downloaded here.

The reference, written from the standard and pydicom's public functions only: ``pixel_array(path,
raw=True, ds_out=…)`` (no colour conversion by cxrlab's route, ``ds_out`` says what the decoder returned),
``convert_color_space`` for YBR_FULL / YBR_FULL_422, ``apply_color_lut`` for palettes, ITU-R BT.601 luma;
for grey ``apply_modality_lut``, then ``apply_voi_lut`` (its output range: a VOI LUT's entry bits, a
window's the modality range of the stored bits), else for Bits Stored > 8 the 0.5–99.5 percentiles of the
modality output, else the modality range; linear to 0–255 rounded half up; MONOCHROME1 inverted.

A refusal passes only when plain pydicom cannot decode the file either, or for the stated policy: more
than one frame is refused (the first frame is never taken silently). The decoders themselves are checked
against each other: every installed pydicom plugin that decodes a compressed file gives cxrlab's image
within one grey level (lossy baseline JPEG differs by one level between libjpeg and GDCM's IDCT; every
other file is identical)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import DATA_ROOT
from pydicom.dataset import Dataset
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    convert_color_space,
    get_decoder,
    pixel_array,
)

from cxrlab.data.dicom import DicomError, read_dicom
from cxrlab.data.images import ImageReadError, load_gray
from cxrlab.errors import CxrError

BUNDLED = Path(DATA_ROOT) / "test_files"
NOT_DICOM = {".py", ".json", ".dump", ".txt", ".icc", ".gz"}
LUMA = (0.299, 0.587, 0.114)


def _cached_downloads() -> list[Path]:
    """pydicom's downloadable test files already on disk (its cache), without creating or fetching."""
    from pydicom.data.download import get_config_dir, get_url_map

    cache = get_config_dir() / "data"
    return [cache / name for name in sorted(get_url_map()) if (cache / name).is_file()]


def _image_files() -> list[Path]:
    files = [p for p in sorted(BUNDLED.rglob("*")) if p.is_file() and p.suffix not in NOT_DICOM]
    found = []
    for path in files + _cached_downloads():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, force=True, defer_size=1024)
        except Exception:  # noqa: BLE001 - not DICOM at all: not part of the oracle
            continue
        if any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            found.append(path)
    return found


FILES = _image_files()


def _id(path: Path) -> str:
    return str(path.relative_to(BUNDLED)) if path.is_relative_to(BUNDLED) else f"cache/{path.name}"


def _to8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    return np.clip(np.floor((values - lo) / (hi - lo) * 255 + 0.5), 0, 255).astype(np.uint8)


def reference(path: Path, plugin: str = "") -> np.ndarray:
    """Plain pydicom → 8-bit grey (module docstring); raises whatever pydicom raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        out = Dataset()
        try:  # from the file, so that ds_out tells the photometric interpretation of the decoded array
            arr = pixel_array(path, index=0, raw=True, ds_out=out, decoding_plugin=plugin)
            photometric = str(out.PhotometricInterpretation)
        except Exception:  # noqa: BLE001 - deflated or oddly encapsulated files: from the dataset
            arr = pixel_array(ds, index=0, raw=True, decoding_plugin=plugin)
            photometric = str(ds.PhotometricInterpretation)
        bits = int(ds.BitsStored)
        rgb = None
        if photometric == "PALETTE COLOR":
            rgb, top = apply_color_lut(arr, ds), 2 ** int(ds.RedPaletteColorLookupTableDescriptor[2]) - 1
        elif photometric in ("YBR_FULL", "YBR_FULL_422"):
            rgb, top = convert_color_space(arr, photometric, "RGB"), 2**bits - 1
        elif photometric in ("RGB", "YBR_ICT", "YBR_RCT"):  # J2K decoders undo ICT/RCT themselves
            rgb, top = arr, 2**bits - 1
        if rgb is not None:
            rgb = rgb.astype(np.float64)
            return _to8(LUMA[0] * rgb[..., 0] + LUMA[1] * rgb[..., 1] + LUMA[2] * rgb[..., 2], 0, top)
        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
        signed = int(ds.PixelRepresentation) == 1
        stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1])
        modality_range = sorted(np.asarray(apply_modality_lut(stored, ds), dtype=np.float64))
        if "VOILUTSequence" in ds:
            values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
            lo, hi = 0, 2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
            lo, hi = modality_range
        elif bits > 8:
            lo, hi = np.percentile(values, [0.5, 99.5])
            if hi <= lo:
                lo, hi = values.min(), values.max()
        else:
            lo, hi = modality_range
        grey = _to8(values, lo, hi)
        return 255 - grey if photometric == "MONOCHROME1" else grey


def _frames(path: Path) -> int:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return int(pydicom.dcmread(path, stop_before_pixels=True, force=True).get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 1


def test_the_oracle_has_files():
    """pydicom bundles its test files: the oracle never runs on an empty set (CI installs pydicom)."""
    names = {p.name for p in FILES}
    assert len(FILES) >= 60, f"only {len(FILES)} pydicom test files with pixel data in {BUNDLED}"
    assert {"CT_small.dcm", "JPGExtended.dcm", "SC_ybr_full_422_uncompressed.dcm",
            "examples_palette.dcm", "MR_small.dcm"} <= names  # fmt: skip


@pytest.mark.parametrize("path", FILES, ids=_id)
def test_decodes_like_pydicom_or_refuses_in_one_line(path):
    try:
        expected: np.ndarray | Exception = reference(path)
    except Exception as exc:  # noqa: BLE001 - plain pydicom cannot decode it either
        expected = exc
    try:
        image = read_dicom(path)
    except DicomError as refused:
        message = str(refused)
        assert isinstance(refused, CxrError) and "\n" not in message and message.startswith(f"{path}: ")
        assert not message.rstrip().endswith(":") and len(refused.reason) > 20
        if isinstance(expected, np.ndarray):  # pydicom decodes it: only the multi-frame policy may refuse
            assert _frames(path) > 1, f"refused although pydicom decodes it: {refused.reason}"
            assert refused.reason.startswith(f"multi-frame DICOM ({_frames(path)} frames)")
        with pytest.raises(ImageReadError) as again:  # the reader every command uses: the same reason
            load_gray(path, 32)
        assert str(again.value) == refused.reason
        return
    assert not isinstance(expected, Exception), f"cxrlab decoded what pydicom cannot: {expected!r}"
    assert image.dtype == np.uint8 and image.shape == expected.shape
    assert int(np.abs(image.astype(int) - expected.astype(int)).max()) <= 1


# The refusals of the bundled files (pydicom 3.0), each with its reason: all other files decode.
REFUSED = {
    "MR_truncated.dcm": "truncated DICOM file: the header describes an image but its pixel data is missing",
    "JPEG-lossy.dcm": "JPEG Extended (Process 2 and 4) pixel data cannot be decoded (gdcm: ",
    "JPEG2000-embedded-sequence-delimiter.dcm": "JPEG 2000 Image Compression pixel data cannot be decoded (",
    "badVR.dcm": "Explicit VR Little Endian pixel data cannot be decoded (ValueError: invalid literal",
    "meta_missing_tsyntax.dcm": "damaged DICOM header (no image size)",
    "nested_priv_SQ.dcm": "damaged DICOM header (no image size)",
    "SC_rgb_rle_2frame.dcm": "multi-frame DICOM (2 frames)",
    "SC_rgb_rle_16bit_2frame.dcm": "multi-frame DICOM (2 frames)",
    "SC_rgb_rle_32bit_2frame.dcm": "multi-frame DICOM (2 frames)",
    "examples_ybr_color.dcm": "multi-frame DICOM (30 frames)",
    "rtdose.dcm": "multi-frame DICOM (15 frames)",
    "rtdose_expb.dcm": "multi-frame DICOM (15 frames)",
    "rtdose_rle.dcm": "multi-frame DICOM (15 frames)",
}


def test_which_bundled_files_are_refused_and_why():
    refused = {}
    for path in (p for p in FILES if p.is_relative_to(BUNDLED)):
        try:
            read_dicom(path)
        except DicomError as exc:
            refused[_id(path)] = exc.reason
    assert set(refused) == set(REFUSED)
    for name, start in REFUSED.items():
        assert refused[name].startswith(start), (name, refused[name])
    damaged = [n for n in REFUSED if "cannot be decoded" in REFUSED[n] and n != "badVR.dcm"]
    assert all(refused[n].endswith("the pixel data or its header is probably damaged") for n in damaged)


def test_bundled_files_without_pixel_data_are_refused_as_non_images():
    """The other 14 of pydicom's 78 top-level files (SR, RT plans and structures, an ECG, bare datasets)."""
    others = [p for p in sorted(BUNDLED.glob("*.dcm")) if p not in FILES]
    assert len(others) >= 10
    for path in others:
        with pytest.raises(DicomError) as refused:
            read_dicom(path)
        assert refused.value.reason.startswith("no pixel data: a non-image DICOM object"), path.name
        assert refused.value.reason.endswith("; give image files")


def test_ct_keeps_its_grey_levels():
    """CT_small.dcm (16 bits stored, no VOI window): windowed on its own values, not on 0…65535."""
    path = BUNDLED / "CT_small.dcm"
    stored = pydicom.dcmread(path).pixel_array
    image = read_dicom(path)
    assert len(np.unique(stored)) > 1000 and len(np.unique(image)) >= 200
    assert np.corrcoef(image.ravel(), stored.ravel())[0, 1] > 0.95


def test_ybr_422_and_palette_decode():
    """The three colour cases the old reader got wrong, against the reference and by their content."""
    ybr = BUNDLED / "SC_ybr_full_422_uncompressed.dcm"  # 4:2:2 native: 2/3 of the RGB length
    rgb = BUNDLED / "SC_rgb_small_odd.dcm"
    assert np.array_equal(read_dicom(ybr), reference(ybr)) and read_dicom(ybr).std() > 20
    palette = read_dicom(BUNDLED / "examples_palette.dcm")
    assert abs(float(palette.mean()) - float(reference(BUNDLED / "examples_palette.dcm").mean())) < 0.5
    assert len(np.unique(palette)) > 100  # 16-bit LUT output over 65535, not clipped over 255
    assert read_dicom(rgb).shape == (3, 3)


def _compressed() -> list[tuple[Path, str]]:
    cases = []
    for path in FILES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and syntax.is_encapsulated and _frames(path) == 1:
            cases.append((path, str(syntax)))
    return cases


COMPRESSED = _compressed()


@pytest.mark.parametrize(("path", "syntax"), COMPRESSED, ids=[_id(p) for p, _ in COMPRESSED])
def test_every_installed_decoder_agrees(path, syntax):
    """Each installed pydicom plugin for the syntax decodes the file to cxrlab's image within one grey
    level, or declines it (12-bit JPEG: only pylibjpeg-libjpeg; YBR_RCT JPEG 2000: not pillow)."""
    try:
        image: np.ndarray | None = read_dicom(path)
    except DicomError:
        image = None  # refused as damaged: then no plugin may decode it either
    agreed = []
    for plugin in get_decoder(syntax).available_plugins:
        try:
            other = reference(path, plugin)
        except Exception:  # noqa: BLE001 - a plugin that declines this file
            continue
        assert image is not None, f"refused, but pydicom's {plugin} plugin decodes it"
        assert int(np.abs(image.astype(int) - other.astype(int)).max()) <= 1, plugin
        agreed.append(plugin)
    assert agreed or image is None


def test_the_dicom_extra_decoders_are_installed():
    """cxrlab[dicom] brings python-gdcm and pylibjpeg with its libjpeg and openjpeg plugins."""
    from pydicom import uid

    for syntax in (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLosslessSV1, uid.JPEGLSLossless,
                   uid.JPEGLSNearLossless, uid.JPEG2000Lossless, uid.JPEG2000, uid.HTJ2K):  # fmt: skip
        plugins = get_decoder(syntax).available_plugins
        assert "pylibjpeg" in plugins, syntax.name
        assert syntax == uid.HTJ2K or "gdcm" in plugins, syntax.name


def _site_without(tmp_path: Path, *distributions: str) -> Path:
    """This venv's site-packages as symlinks, less every file of the named installed distributions: a
    real install without those packages (their entry points, which pydicom's plugins load, gone too)."""
    from importlib.metadata import distribution

    site = Path(pydicom.__file__).resolve().parents[1]
    omit = {Path(str(f)).parts[0] for name in distributions for f in distribution(name).files or ()}
    shadow = tmp_path / "site-packages"
    shadow.mkdir()
    for entry in site.iterdir():
        if entry.name not in omit:
            (shadow / entry.name).symlink_to(entry)
    return shadow


def test_12_bit_jpeg_without_libjpeg_says_what_to_install(tmp_path):
    """In an install without pylibjpeg-libjpeg, GDCM and pillow both decline 12-bit JPEG: one complete
    line names the syntax, each decoder's own reason and the package to install."""
    shadow = _site_without(tmp_path, "pylibjpeg-libjpeg")
    code = (
        f"import site; site.addsitedir({str(shadow)!r})\n"
        "import importlib.util; assert importlib.util.find_spec('libjpeg') is None\n"
        "from cxrlab.data.dicom import DicomError, read_dicom\n"
        f"try:\n    read_dicom({str(BUNDLED / 'JPGExtended.dcm')!r})\n"
        "except DicomError as e:\n    print(e.reason)\nelse:\n    print('decoded')\n"
    )
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    reason = proc.stdout.strip()
    assert "\n" not in reason
    assert reason.startswith("JPEG Extended (Process 2 and 4) pixel data cannot be decoded (gdcm: ")
    assert "gdcm: GDCM does not support 'JPEG Extended' for samples with 12-bit precision" in reason
    assert "pillow: " in reason and "raised by all available plugins" not in reason
    assert reason.endswith(
        "another decoder may read it: pip install pylibjpeg pylibjpeg-libjpeg "
        "(all come with pip install 'cxrlab[dicom]')"
    )


def test_jpeg_2000_with_no_decoder_installed_says_what_to_install(tmp_path):
    """Without python-gdcm, pylibjpeg-openjpeg and pillow no decoder reads JPEG 2000: refused before
    decoding, naming the syntax and each alternative."""
    shadow = _site_without(tmp_path, "python-gdcm", "pylibjpeg-openjpeg", "pillow")
    code = (
        f"import site; site.addsitedir({str(shadow)!r})\n"
        "from cxrlab.data.dicom import DicomError, read_dicom\n"
        f"try:\n    read_dicom({str(BUNDLED / 'MR_small_jp2klossless.dcm')!r})\n"
        "except DicomError as e:\n    print(e.reason)\nelse:\n    print('decoded')\n"
    )
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "transfer syntax JPEG 2000 Image Compression (Lossless Only) needs a decoder that is not installed: "
        "pip install python-gdcm or pip install pylibjpeg pylibjpeg-openjpeg or pip install pillow "
        "(pip install 'cxrlab[dicom]' brings python-gdcm and pylibjpeg pylibjpeg-openjpeg)"
    )


def test_dicom_extra_matches_pyproject():
    """The packages cxrlab's messages say come with cxrlab[dicom] are the extra's, in pyproject.toml."""
    import re
    import tomllib

    from cxrlab.data.dicom import DICOM_EXTRA

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    extra = pyproject["project"]["optional-dependencies"]["dicom"]
    assert {re.split(r"[<>=!~ \[;]", r)[0] for r in extra} == set(DICOM_EXTRA)
