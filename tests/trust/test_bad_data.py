"""Bad data through the real CLI (issue 10): degenerate features for t-SNE, unsafe or corrupt .npz
arrays, file names that are not UTF-8, hidden and unreadable class folders. Each case either works
(correctly) or gives one line naming the problem."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrlab.data.index import discover
from cxrlab.errors import DataError
from cxrlab.evaluation.plots import tsne_problem
from tests.conftest import run_cli
from tests.trust.conftest import one_line_error

TRAIN = [
    "--model", "small_cnn", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
    "--no-tensorboard", "-q", "--set", "eval.tsne=false", "--set", "eval.bootstrap=50",
]  # fmt: skip
NOT_UTF8 = b"\xff\xfe.png"


def _train(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("train", "--data", str(data), *TRAIN, *extra, "--out", str(out), timeout=400)


# --------------------------------------------------------------------------- case 3: t-SNE


def test_tsne_on_identical_features_returns_instead_of_segfaulting(tmp_path):
    """scikit-learn's t-SNE killed the interpreter (SIGSEGV) on coinciding points: its PCA init divides
    by a zero spread. In a child process, so that a regression fails this test instead of pytest."""
    code = (
        "import sys, numpy as np; from pathlib import Path; from cxrlab.evaluation.plots import tsne\n"
        "x = np.zeros((20, 64), np.float32); near = x.copy(); near[0, 0] = 1e-30\n"
        "y = np.arange(20) % 2\n"
        "for f in (x, near): print(tsne(f, y, ['a', 'b'], Path(sys.argv[1]) / 't.png'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.split() == ["None", "None"]
    assert not (tmp_path / "t.png").exists()


@pytest.mark.parametrize(
    "features,reason",
    [
        (np.zeros((20, 8)), "identical"),
        (np.full((20, 8), 3.5), "identical"),
        (np.r_[np.zeros((19, 8)), np.full((1, 8), np.nan)], "NaN or infinite"),
        (np.random.default_rng(0).random((4, 8)), "at least 5"),
    ],
)
def test_tsne_problem_names_degenerate_features(features, reason):
    assert reason in tsne_problem(features)


def test_tsne_problem_accepts_ordinary_and_barely_distinct_features():
    assert tsne_problem(np.random.default_rng(0).random((20, 8))) is None
    x = np.zeros((20, 8))
    x[0, 0] = 1e-6
    assert tsne_problem(x) is None


def _black_pngs(root: Path, classes=("normal", "pneumonia"), n: int = 12) -> Path:
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (32, 32), 0).save(root / name / f"{i}.png")
    return root


def test_train_on_all_black_images_skips_tsne_with_a_note(tmp_path):
    data = _black_pngs(tmp_path / "black")
    out = tmp_path / "run"
    proc = _train(data, out, "--set", "eval.tsne=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    m = json.loads((out / "metrics.json").read_text())
    assert "tsne" not in m["plots"]
    assert "identical" in m["plot_notes"]["tsne"]
    assert "t-SNE skipped" in (out / "report.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- cases 4, 5, 11: npz


@pytest.fixture(scope="module")
def real_images(pneumoniamnist_npz) -> tuple[np.ndarray, np.ndarray]:
    """40 real PneumoniaMNIST training images (uint8, 28 x 28) with their labels (20 per class)."""
    with np.load(pneumoniamnist_npz) as npz:
        x, y = npz["train_images"], npz["train_labels"].reshape(-1)
    rows = np.r_[np.flatnonzero(y == 0)[:20], np.flatnonzero(y == 1)[:20]]
    return x[rows], y[rows].astype(np.int64)


def _npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


# case -> (new images from the real ones, new labels from the real ones, None: keep; message)
REFUSED = {
    "label_1e9": (None, lambda y: np.r_[y[:-1], 10**9], "train_labels has label 1000000000; expected"),
    "fractional_labels": (None, lambda y: y + 0.7, "non-integer label(s) (e.g. 0.7 at index 0)"),
    "negative_label": (None, lambda y: np.r_[y[:-1], -1], "negative label (-1 at index 39)"),
    "label_gap": (None, lambda y: y * 2, "no image in train_labels has label 1 (labels used: 0, 2)"),
    "text_labels": (None, lambda y: np.array(["normal", "pneumonia"])[y], "holds text labels (dtype <U9)"),
    "object_labels": (None, lambda y: y.astype(object), "pickled object array, which cxrlab never loads"),
    "nan_pixels": (lambda x: np.where(np.arange(x.size).reshape(x.shape) % 97 == 0, np.nan, x / 255.0),
                   None, "NaN or infinite pixel(s)"),
    "flat_images": (lambda x: x.reshape(-1), None, "has shape (31360,); expected (N, H, W), (N, H, W, 1)"),
    "channels_first": (lambda x: x[:, None], None, "has shape (40, 1, 28, 28); expected"),
    "four_channels": (lambda x: np.stack([x] * 4, -1), None, "has shape (40, 28, 28, 4); expected"),
    "complex_pixels": (lambda x: x.astype(np.complex64), None, "has dtype complex64"),
}  # fmt: skip


def _refused_npz(folder: Path, real: tuple[np.ndarray, np.ndarray], case: str) -> tuple[Path, str]:
    x, y = real
    make_x, make_y, message = REFUSED[case]
    path = _npz(folder / "data.npz", train_images=make_x(x) if make_x else x,
                train_labels=make_y(y) if make_y else y)  # fmt: skip
    return path, message


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unusable_npz_arrays_are_refused_naming_key_and_value(tmp_path, real_images, case):
    path, message = _refused_npz(tmp_path, real_images, case)
    with pytest.raises(DataError) as err:
        discover(path)
    assert message in str(err.value) and "train_" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("case", ["label_1e9", "object_labels", "nan_pixels", "flat_images"])
def test_unusable_npz_through_the_cli_is_one_line(tmp_path, real_images, case):
    """label 1e9 once exhausted memory (OOM kill, status "running"); the others were internal errors or
    silently wrong runs."""
    path, message = _refused_npz(tmp_path, real_images, case)
    line = one_line_error(_train(path, tmp_path / "run"))
    assert message in line
    assert not (tmp_path / "run").exists()


def test_npz_label_outside_the_known_classes(tmp_path, real_images):
    x, y = real_images
    path = _npz(tmp_path / "pneumoniamnist_mine.npz", train_images=x, train_labels=np.r_[y[:-1], 2])
    line = one_line_error(_train(path, tmp_path / "run"))
    assert "train_labels has label 2" in line and "2 classes (0=normal, 1=pneumonia)" in line


def test_npz_split_without_labels(tmp_path, real_images):
    x, y = real_images
    path = _npz(tmp_path / "d.npz", train_images=x, train_labels=y, val_images=x[:4])
    assert "has val_images but no val_labels" in one_line_error(_train(path, tmp_path / "run"))


def _stretched(x: np.ndarray) -> np.ndarray:
    """Each image min–max stretched to 0..255 (the rule for wide integer types)."""
    f = x.astype(np.float64)
    lo, hi = f.min(axis=(1, 2), keepdims=True), f.max(axis=(1, 2), keepdims=True)
    return np.clip((f - lo) / (hi - lo) * 255 + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "case",
    ["float_0_1", "float_0_255", "float_signed", "uint16", "int16_wide", "int64_in_range", "bool",
     "nhw1", "rgb"],
)  # fmt: skip
def test_npz_pixels_of_every_dtype_become_the_right_uint8(tmp_path, real_images, case):
    """float [0,1] once became all zeros and int16 wrapped modulo 256; now each follows the documented
    rule (cxrlab.data.npz)."""
    x, y = real_images
    stored, expected = {
        "float_0_1": (x / 255.0, x),
        "float_0_255": (x.astype(np.float32), x),
        "float_signed": (x / 127.5 - 1.0, _stretched(x)),
        "uint16": (x.astype(np.uint16) * 257, _stretched(x)),
        "int16_wide": (x.astype(np.int16) * 100 - 12000, _stretched(x)),
        "int64_in_range": (x.astype(np.int64), x),
        "bool": (x > 128, (x > 128).astype(np.uint8) * 255),
        "nhw1": (x[..., None], x),
        "rgb": (np.stack([x] * 3, -1), x),
    }[case]
    got = discover(_npz(tmp_path / "d.npz", train_images=stored, train_labels=y)).npz["train_images"]
    assert got.dtype == np.uint8 and got.shape == x.shape
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_train_on_float_npz_sees_the_real_pixels(tmp_path, real_images):
    x, y = real_images
    path = _npz(tmp_path / "d.npz", train_images=(x / 255.0).astype(np.float32), train_labels=y)
    out = tmp_path / "run"
    proc = _train(path, out, "--set", "eval.tsne=true")  # float npz images once segfaulted in t-SNE
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = np.asarray(Image.open(out / "plots" / "samples.png"))
    assert samples.std() > 20  # real radiographs, not the all-black tiles of the truncating cast


# --------------------------------------------------------------------------- case 7: non-UTF-8 names


@pytest.fixture()
def data_with_bad_name(tmp_path, covid_small) -> Path:
    """covid_small's train split as class folders, plus a real image whose name is not UTF-8."""
    root = tmp_path / "data"
    shutil.copytree(covid_small / "train", root)
    good = sorted((root / "normal").iterdir())[0]
    bad = os.path.join(os.fsencode(root / "normal"), NOT_UTF8)
    shutil.copyfile(os.fsencode(good), bad)
    return root


def test_train_skips_a_file_name_that_is_not_utf8_and_names_it(data_with_bad_name, tmp_path):
    out = tmp_path / "run"
    proc = _train(data_with_bad_name, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    skipped = json.loads((out / "metrics.json").read_text())["data"]["skipped"]
    assert [Path(s["path"]).name for s in skipped] == ["\\xff\\xfe.png"]
    assert "not valid UTF-8" in skipped[0]["reason"]
    assert "\\xff\\xfe.png" in (out / "report.html").read_text(encoding="utf-8")
    assert "xff" not in (out / "splits.csv").read_text(encoding="utf-8")


def test_audit_lists_a_file_name_that_is_not_utf8(data_with_bad_name, tmp_path):
    out = tmp_path / "audit"
    proc = run_cli("audit", str(data_with_bad_name), "--out", str(out), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bad = json.loads((out / "audit.json").read_text(encoding="utf-8"))["unreadable"]
    assert [Path(b["path"]).name for b in bad] == ["\\xff\\xfe.png"]
    assert "not valid UTF-8" in bad[0]["reason"]
    assert "\\xff\\xfe.png" in (out / "audit.html").read_text(encoding="utf-8")


def test_class_folder_name_that_is_not_utf8_is_one_line(tmp_path):
    data = _black_pngs(tmp_path / "d", classes=("normal",))
    os.rename(os.fsencode(data / "normal"), os.path.join(os.fsencode(data), b"covid\xff"))
    _black_pngs(data, classes=("normal",))
    line = one_line_error(_train(data, tmp_path / "run"))
    assert "covid\\xff" in line and "not valid UTF-8" in line


# --------------------------------------------------------------------------- case 12: folders


@pytest.mark.parametrize("command", ["train", "audit"])
def test_only_one_class_names_the_hidden_and_broken_folders(tmp_path, command):
    data = _black_pngs(tmp_path / "d", classes=("normal", ".covid", ".ipynb_checkpoints"), n=3)
    os.symlink(tmp_path / "nowhere", data / "pneumonia")
    args = ["audit", str(data), "--out", str(tmp_path / "a")] if command == "audit" else [
        "train", "--data", str(data), *TRAIN, "--out", str(tmp_path / "run")]  # fmt: skip
    line = one_line_error(run_cli(*args))
    assert "only one class (normal)" in line
    assert "ignored hidden folders: .covid, .ipynb_checkpoints" in line
    assert "pneumonia -> " in line and "broken symlink" in line


def _unprivileged() -> list[str]:
    """A command prefix under which permission bits hold: none for a normal user; for root, setpriv
    dropping the capabilities that bypass them."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: chmod cannot make a folder unreadable")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


@pytest.mark.parametrize("command", ["train", "audit"])
def test_unreadable_class_folder_says_it_cannot_be_read(tmp_path, command):
    data = _black_pngs(tmp_path / "d", n=3)
    (data / "pneumonia").chmod(0o000)
    args = ["audit", str(data), "--out", str(tmp_path / "a")] if command == "audit" else [
        "train", "--data", str(data), *TRAIN, "--out", str(tmp_path / "run")]  # fmt: skip
    try:
        proc = subprocess.run([*_unprivileged(), sys.executable, "-m", "cxrlab", *args], capture_output=True,
                              text=True, timeout=300)  # fmt: skip
    finally:
        (data / "pneumonia").chmod(0o755)
    line = one_line_error(proc)
    assert f"cannot read class folder {data / 'pneumonia'}: Permission denied" in line
    assert "holds no images" not in line
