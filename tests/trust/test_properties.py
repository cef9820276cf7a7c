"""Generated bad input (hypothesis): configs, npz files, image files and whole data folders.

The invariant for every generated case: the command either succeeds, or stops with exactly one line
("error: ...", exit 2) and no traceback — and nothing outside the run folder and the cache changes.
In-process cases (configs, npz, images) are cheap and run by the hundred; end-to-end cases go through
the real `cxr` in a subprocess and run by the dozen. ``CXRLAB_HYPOTHESIS_SCALE`` multiplies the numbers
(docs/trust.md records a long run).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cxrlab.config import RunConfig
from cxrlab.errors import CxrError
from tests.conftest import run_cli
from tests.trust.conftest import hypothesis_settings


def _settings(n: int) -> settings:
    return hypothesis_settings(n, HealthCheck.data_too_large)


# ---------------------------------------------------------------- configs ----------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["none", "backbone", "3", "adam", "sgd", "youden", "cpu", "cuda", "avg", "16-mixed"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=8), inner, max_size=3), max_leaves=6)  # fmt: skip


def _known_keys() -> dict[str, list[str]]:
    dump = RunConfig().model_dump()
    return {section: list(value) for section, value in dump.items() if isinstance(value, dict)}


@st.composite
def config_dicts(draw) -> dict:
    """Mostly-known sections and keys with values of any type; sometimes unknown keys or non-mappings."""
    known = _known_keys()
    raw: dict = {}
    for section in draw(st.lists(st.sampled_from([*known, "task", "bogus"]), max_size=4, unique=True)):
        if section == "task":
            raw["task"] = draw(SCALARS)
        elif section == "bogus" or draw(st.integers(0, 9)) == 0:
            raw[section] = draw(VALUES)
        else:
            keys = draw(st.lists(st.sampled_from(known[section] + ["typo_key"]), max_size=4, unique=True))
            raw[section] = {k: draw(VALUES) for k in keys}
    return raw


@_settings(400)
@given(raw=config_dicts())
def test_any_config_is_valid_or_one_config_error(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    try:
        cfg = RunConfig.load(path)
    except CxrError as exc:
        message = str(exc)
        assert message and "\n" not in message and str(path) in message
        return
    # a config that loads round-trips exactly through YAML
    again = tmp_path_factory.mktemp("cfg") / "again.yaml"
    cfg.save(again)
    assert RunConfig.load(again) == cfg
    assert math.isfinite(cfg.train.lr) and cfg.train.lr > 0


@_settings(150)
@given(text=st.text(max_size=200))
def test_any_yaml_text_is_valid_or_one_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        RunConfig.load(path)
    except CxrError as exc:
        assert "\n" not in str(exc)


# ---------------------------------------------------------------- npz files --------------------------------

DTYPES = ["uint8", "uint16", "int16", "int32", "float32", "float64", "bool"]


@st.composite
def npz_payloads(draw) -> dict[str, np.ndarray]:
    """MedMNIST-like archives with any pixel type, shape and label values."""
    dtype = draw(st.sampled_from(DTYPES))
    shape_kind = draw(st.sampled_from(["nhw", "nhw1", "nhw3", "n", "nhwc5"]))
    side = draw(st.integers(4, 12))
    arrays: dict[str, np.ndarray] = {}
    n_classes = draw(st.integers(1, 3))
    label_kind = draw(st.sampled_from(["ok", "ok", "ok", "float", "negative", "huge", "column2", "text"]))
    splits = draw(st.lists(st.sampled_from(["train", "val", "test"]), min_size=1, max_size=3, unique=True))
    for split in splits:
        n = draw(st.integers(0, 10))
        shape = {"nhw": (n, side, side), "nhw1": (n, side, side, 1), "nhw3": (n, side, side, 3),
                 "n": (n,), "nhwc5": (n, side, side, 5)}[shape_kind]  # fmt: skip
        seed = draw(st.integers(0, 2**16))
        rng = np.random.default_rng(seed)
        if dtype == "bool":
            images = rng.random(shape) > 0.5
        elif dtype.startswith("float"):
            scale = draw(st.sampled_from([1.0, 255.0, 4095.0, -1.0]))
            images = (rng.random(shape) * scale).astype(dtype)
            if draw(st.integers(0, 5)) == 0 and images.size:
                images.flat[0] = draw(st.sampled_from([np.nan, np.inf]))
        else:
            info = np.iinfo(dtype)
            images = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
        labels = rng.integers(0, n_classes, size=(n, 1))
        if label_kind == "float":
            labels = labels + 0.7
        elif label_kind == "negative" and n:
            labels[0, 0] = -1
        elif label_kind == "huge" and n:
            labels[0, 0] = 10**9
        elif label_kind == "column2":
            labels = np.concatenate([labels, labels], axis=1)
        elif label_kind == "text":
            labels = np.array([f"c{v}" for v in labels.ravel()])
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels
    return arrays


def _prepare(path: Path):
    from cxrlab.config import DataConfig
    from cxrlab.data.prepare import prepare_data

    return prepare_data(DataConfig(path=str(path)), 16, seed=0, progress=False)


@_settings(250)
@given(arrays=npz_payloads())
def test_any_npz_is_used_faithfully_or_refused_in_one_line(tmp_path_factory, arrays):
    path = tmp_path_factory.mktemp("npz") / "data.npz"
    np.savez(path, **arrays)
    before = path.read_bytes()
    try:
        data = _prepare(path)
    except CxrError as exc:
        assert "\n" not in str(exc) and str(exc)
        assert path.read_bytes() == before
        return
    assert path.read_bytes() == before
    for split, images in data.images.items():
        assert images.dtype == np.uint8 and images.shape[1:] == (16, 16)
        labels = data.labels[split]
        assert labels.min() >= 0 and labels.max() < len(data.classes)
    source = np.concatenate([a.reshape(len(a), -1).astype(np.float64) for k, a in arrays.items()
                             if k.endswith("_images") and a.ndim > 1 and len(a)])  # fmt: skip
    used = np.concatenate([im.reshape(len(im), -1) for im in data.images.values() if len(im)])
    assert len(used) == len(source)
    if np.ptp(source) > 0:
        # pixels that vary in the file must not come out as one flat value (silent corruption)
        assert np.ptp(used.astype(np.int64)) > 0, (source.min(), source.max())


# ---------------------------------------------------------------- image files ------------------------------

MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]
FORMATS = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp"}


@st.composite
def image_bytes(draw) -> tuple[str, bytes]:
    """Real encoded images in any mode and format, sometimes cut short or replaced by noise."""
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(list(FORMATS)))
    w, h = draw(st.integers(1, 64)), draw(st.integers(1, 64))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    base = Image.fromarray(rng.integers(0, 256, size=(h, w), dtype=np.uint8))
    img = Image.fromarray(np.asarray(base, dtype=np.uint16) * 257) if mode == "I;16" else base.convert(mode)
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        img.convert("RGB" if fmt == "JPEG" else "L").save(buf, format=fmt)
    data = buf.getvalue()
    damage = draw(st.sampled_from(["none", "none", "truncate", "noise", "empty"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "noise":
        data = draw(st.binary(max_size=256))
    elif damage == "empty":
        data = b""
    return FORMATS[fmt], data


@_settings(300)
@given(case=image_bytes(), size=st.sampled_from([8, 17, 32]),
       resize=st.sampled_from(["squash", "pad", "crop"]))  # fmt: skip
def test_any_image_file_decodes_or_gives_a_reason(tmp_path_factory, case, size, resize):
    from cxrlab.data.images import ImageReadError, load_gray

    suffix, data = case
    path = tmp_path_factory.mktemp("img") / f"x{suffix}"
    path.write_bytes(data)
    try:
        gray = load_gray(path, size, resize)
    except ImageReadError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert gray.dtype == np.uint8 and gray.shape == (size, size)
    assert path.read_bytes() == data


# ---------------------------------------------------------------- end to end -------------------------------


def _tree(root: Path) -> dict[str, str]:
    """Every file under root with a digest of its bytes (symlinks by target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "link:" + os.readlink(p)
            else:
                with open(p, "rb") as fh:
                    out[rel] = hashlib.sha1(fh.read()).hexdigest()
    return out


CLASS_NAMES = st.sampled_from(["normal", "covid", "pneumonia", ".hidden", "ü nicode", "a b"])


@st.composite
def data_folders(draw) -> dict:
    """A class-folder dataset: 1–3 classes, 0–8 real-looking images each, odd files mixed in."""
    classes = draw(st.lists(CLASS_NAMES, min_size=1, max_size=3, unique=True))
    layout: dict[str, list[tuple[str, bytes]]] = {}
    for cls in classes:
        files = []
        for i in range(draw(st.integers(0, 8))):
            suffix, data = draw(image_bytes())
            files.append((f"img{i}{suffix}", data))
        if draw(st.booleans()):
            files.append(("notes.txt", b"not an image"))
        layout[cls] = files
    return layout


def _write_folder(root: Path, layout: dict) -> None:
    for cls, files in layout.items():
        (root / cls).mkdir(parents=True)
        for name, data in files:
            (root / cls / name).write_bytes(data)


OPTIONS = st.fixed_dictionaries({
    "--epochs": st.sampled_from(["1", "0", "-1", "2"]),
    "--batch-size": st.sampled_from(["4", "0", "1", "x"]),
    "--lr": st.sampled_from(["1e-3", "0", "-1", "inf", "nan", "1e20"]),
    "--seed": st.sampled_from(["0", "-1", "7", "99999999999999999999"]),
    "--image-size": st.sampled_from(["16", "32", "3", "100000"]),
})  # fmt: skip


def _assert_clean_outcome(proc) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "internal error" not in proc.stderr, proc.stderr
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (
            proc.returncode, proc.stderr)  # fmt: skip


@pytest.mark.slow
@_settings(12)
@given(layout=data_folders(), options=OPTIONS, out_choice=st.sampled_from(["new", "data", "parent", "class"]),
       overwrite=st.booleans())  # fmt: skip
def test_train_on_generated_folders_is_clean_and_never_touches_the_data(
    tmp_path_factory, layout, options, out_choice, overwrite
):
    work = tmp_path_factory.mktemp("e2e")
    data = work / "data"
    _write_folder(data, layout)
    out = {"new": work / "run", "data": data, "parent": work, "class": data / next(iter(layout))}[out_choice]
    before = _tree(data)
    args = ["train", "--data", str(data), "--out", str(out), "--model", "small_cnn", "-q", "--no-tensorboard",
            "--set", "eval.tsne=false", "--set", "eval.bootstrap=20"]  # fmt: skip
    for flag, value in options.items():
        args += [flag, value]
    if overwrite:
        args.append("--overwrite")
    proc = run_cli(*args, timeout=300)
    _assert_clean_outcome(proc)
    assert _tree(data) == before, "the data folder changed"
    outside = {p for p in os.listdir(work)} - {"data", "run"}
    assert not outside, f"files written outside the run folder: {outside}"


@pytest.mark.slow
@_settings(10)
@given(arrays=npz_payloads(), overwrite=st.booleans())
def test_train_and_audit_on_generated_npz_files_are_clean(tmp_path_factory, arrays, overwrite):
    work = tmp_path_factory.mktemp("e2e-npz")
    path = work / "data.npz"
    np.savez(path, **arrays)
    before = _tree(work)
    args = ["train", "--data", str(path), "--out", str(work / "run"), "--model", "small_cnn",
            "--image-size", "16", "--epochs", "1", "-q", "--no-tensorboard", "--set", "eval.tsne=false",
            "--set", "eval.bootstrap=20"]  # fmt: skip
    proc = run_cli(*args, *(["--overwrite"] if overwrite else []), timeout=300)
    _assert_clean_outcome(proc)
    proc = run_cli("audit", str(path), "--out", str(work / "audit"), timeout=300)
    _assert_clean_outcome(proc)
    after = {k: v for k, v in _tree(work).items() if not k.startswith(("run" + os.sep, "audit" + os.sep))}
    assert after == before
