"""Bad input found since (issue 26, item 3): label files holding only a byte-order mark or an endless field,
impossible ``--max-upload-mb`` values, a positive class the model does not have, and the same class of
failure across every numeric and name-valued option of every command.

The invariant for every case: the command stops before any work with exactly one line on stderr,
``error: ...`` (exit 2, a usage error or a :class:`cxrlab.errors.CxrError`), never ``internal error``, a
traceback, a hang or a folder written. Everything runs in this process (``run_cli_inprocess``); the one
trained run (small CNN, 1 epoch, 32 px) is shared by the module.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cxrlab.config import LabelsConfig
from cxrlab.errors import CxrError
from tests.conftest import run_cli_inprocess
from tests.trust.conftest import hypothesis_settings, one_line_error, png_classes

TRAIN = [
    "train", "--model", "small_cnn", "-q", "--epochs", "1", "--image-size", "32", "--no-tensorboard",
    "--set", "eval.explain=off", "--set", "eval.tsne=false", "--set", "eval.bootstrap=50",
]  # fmt: skip


def _settings(n: int) -> settings:
    return hypothesis_settings(n, HealthCheck.filter_too_much)


def refused(proc) -> str:
    """The issue's invariant: exit 2, one ``error:`` line on stderr, no internal error, no traceback."""
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    return one_line_error(proc)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """2 classes (a, b) x 12 random grey 32 x 32 PNGs."""
    return png_classes(tmp_path_factory.mktemp("data") / "d_base")


@pytest.fixture(scope="module")
def run(tmp_path_factory, images) -> Path:
    """A finished small-CNN run on ``images`` (binary: positive class b)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    run_cli_inprocess(*TRAIN, "--data", str(images), "--out", str(out), check=True)
    return out


_counter = itertools.count()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A fresh, not yet existing path per call (an --out that must stay unwritten)."""
    root = tmp_path_factory.mktemp("scratch")
    return lambda: root / f"out{next(_counter)}"


# ------------------------------------------------------------------------------ 1-2: label files

BOM = b"\xef\xbb\xbf"
LABEL_FILES = {
    "bom": (
        BOM,
        "is empty (nothing but a UTF-8 byte-order mark); it needs a header row and one row per image",
    ),
    "bom+blank": (BOM + b"\r\n\n", "is empty (nothing but a UTF-8 byte-order mark and blank space)"),
    "long row": (b"path,label\n0.png," + b"x" * 140_000 + b"\n", "the row starting at line 2"),
    "long header": (b"path," + b"x" * 140_000 + b"\n", "the row starting at line 1"),
    "unclosed quote": (b'path,label\n0.png,"a\n' + b"1.png,b\n" * 20_000, "the row starting at line 2"),
}
TOO_LONG = (
    'has a field longer than 131,072 characters, which no label file needs: usually a quote (") opened and '
    "never closed, so the lines after it read as one field; fix the quoting or re-export the file"
)


@pytest.mark.parametrize("command", ["train", "audit", "evaluate"])
@pytest.mark.parametrize("case", list(LABEL_FILES))
def test_a_bom_only_or_endless_label_file_is_one_line(request, images, scratch, command, case):
    content, words = LABEL_FILES[case]
    file = scratch().with_suffix(".csv")
    file.write_bytes(content)
    out = scratch()
    labels = ["--labels", str(file), "--label-column", "label", "--out", str(out)]
    args = {
        "train": lambda: [*TRAIN, "--data", str(images), *labels],
        "audit": lambda: ["audit", str(images), *labels],
        "evaluate": lambda: ["evaluate", str(request.getfixturevalue("run")), "--data", str(images), *labels],
    }[command]()
    line = refused(run_cli_inprocess(*args))
    assert str(file) in line and words in line
    if case.startswith(("long", "unclosed")):
        assert f"error: {file}: {words} {TOO_LONG}" == line
    assert not out.exists()


@_settings(60)
@given(
    prefix=st.sampled_from([b"", BOM]),
    body=st.lists(st.sampled_from([b"path,label", b"\n", b"\r\n", b",", b'"', b"0.png", b"a", b" ", b"\t"]),
                  max_size=12).map(b"".join),
    long=st.sampled_from([0, 0, 131_073, 200_000]),
)  # fmt: skip
def test_any_label_file_is_read_or_refused_in_one_line(tmp_path_factory, prefix, body, long):
    """The label reader itself, on generated files: a BOM, blank lines, stray quotes, fields over the csv
    module's limit. Either rows come back or one CxrError line naming the file; never another exception."""
    from cxrlab.data.labels import read_labels

    file = tmp_path_factory.mktemp("lab") / "labels.csv"
    file.write_bytes(prefix + body + b"x" * long + b"\n")
    try:
        read_labels(file.parent, LabelsConfig(file=str(file), label_column="label"), check_images=False)
    except CxrError as exc:
        assert "\n" not in str(exc) and str(file) in str(exc)


# --------------------------------------------------------------------------- 3: serve --max-upload-mb

UPLOAD = "give a size in MB above 0 and at most 10,240 (10 GB), e.g. 20"


@pytest.mark.parametrize(
    "value", ["nan", "inf", "-inf", "1e300", "99999999999999999999", "0", "-1", "10240.5"]
)
def test_serve_max_upload_mb_is_finite_positive_and_sane(scratch, value):
    """nan and inf were internal errors and 1e300 started a server that hung; all stop before any server
    (and before the run folder is even read: here it does not exist)."""
    line = refused(run_cli_inprocess("serve", str(scratch()), "--max-upload-mb", value))
    assert line == f"error: --max-upload-mb {float(value):g}: {UPLOAD}"


def test_serve_checks_the_upload_limit_before_the_port_and_the_run(scratch):
    # the largest allowed value passes this check; the next one (the port) then speaks
    line = refused(run_cli_inprocess("serve", str(scratch()), "--max-upload-mb", "10240", "--port", "0"))
    assert "--port 0: choose a port between 1 and 65535" in line


# ------------------------------------------------------------------------ 4: an unknown positive class


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_positive_class_the_model_lacks_is_one_line_naming_its_classes(run, images, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".cxrlab-lock"))
    meta = json.loads((copy / "model.json").read_text())
    meta["operating_point"]["positive_class"] = "ZZZ"
    (copy / "model.json").write_text(json.dumps(meta))
    image = str(images / "a" / "0.png")
    expected = (
        f"error: {copy / 'model.json'}: 'operating_point.positive_class' 'ZZZ' is not a class of the model "
        "(its classes: a, b); the file is damaged or was edited: retrain the run or restore it"
    )
    for command in (
        ["predict", str(copy), image],
        ["evaluate", str(copy), "--out", str(tmp_path / "ev")],
        ["export", str(copy), "--out", str(tmp_path / "m.onnx")],  # wrote 'ZZZ' into the ONNX metadata
        ["explain", str(copy), image, "--out", str(tmp_path / "ex")],
        ["serve", str(copy), "--port", str(_free_port())],
    ):
        assert refused(run_cli_inprocess(*command)) == expected, command
    assert not {"ev", "m.onnx", "ex"} & set(os.listdir(tmp_path))
    # a class named on the command line that the model or data lacks: the known classes are named too
    for command, words in (
        (
            ["explain", str(run), image, "--class", "ZZZ"],
            "--class 'ZZZ' is not a class of this model; it has: a, b",
        ),
        (["evaluate", str(run), "--data", str(images), "--classes", "ZZZ"], "(it has: a, b)"),
        (["gan", "train", "--data", str(images), "--class", "ZZZ"], "class 'ZZZ' not in"),
    ):
        line = refused(run_cli_inprocess(*command, "--out", str(tmp_path / "o")))
        assert words in line and "a, b" in line


# ------------------------------------------------- the same failures across every command's options

F32 = 3.4e38
#: (command, option, type, low, high, inclusive): the accepted values are low..high (an exclusive bound
#: where ``inclusive`` says so: "(]" = low excluded, "[)" = high excluded); None: no bound on that side.
NUMERIC = [
    ("train", "--epochs", int, 1, 100_000, "[]"),
    ("train", "--batch-size", int, 1, 100_000, "[]"),
    ("train", "--image-size", int, 8, 1024, "[]"),
    ("train", "--seed", int, 0, 2**32 - 1, "[]"),
    ("train", "--early-stopping", int, 1, None, "[]"),
    ("train", "--num-nodes", int, 1, 10_000, "[]"),
    ("train", "--max-per-class", int, 1, None, "[]"),
    ("train", "--devices", int, 1, 1024, "[]"),
    ("train", "--lr", float, 0, F32, "(]"),
    ("train", "--weight-decay", float, 0, F32, "[]"),
    ("train", "--dropout", float, 0, 1, "[)"),
    ("train", "--target-sensitivity", float, 0, 1, "(]"),
    ("train", "--tta-shift", float, 0, 0.25, "[]"),
    ("prepare", "--image-size", int, 8, 1024, "[]"),
    ("summary", "--num-classes", int, 1, 100_000, "[]"),
    ("summary", "--in-channels", int, 1, 4096, "[]"),
    ("summary", "--image-size", int, 8, 1024, "[]"),
    ("audit", "--max-distance", int, 0, 256, "[]"),
    ("audit", "--seed", int, 0, 2**32 - 1, "[]"),
    ("bench", "--batch-size", int, 1, 100_000, "[]"),
    ("bench", "--image-size", int, 8, 4096, "[]"),
    ("bench", "--steps", int, 1, 100_000, "[]"),
    ("bench", "--warmup", int, 0, 100_000, "[]"),
    ("bench", "--dataset-size", int, 1, 10**9, "[]"),
    ("bench", "--num-classes", int, 1, 100_000, "[]"),
    ("sweep", "--trials", int, 1, 100_000, "[]"),
    ("reproduce", "--seed", int, 0, 2**32 - 1, "[]"),
    ("export", "--tolerance", float, 0, 1, "[)"),
    ("explain", "--min-share", float, 0, 1, "()"),
    ("serve", "--max-upload-mb", float, 0, 10_240, "(]"),
    ("serve", "--decode-workers", int, 1, 256, "[]"),
    ("serve", "--port", int, 1, 65_535, "[]"),
    ("gan train", "--epochs", int, 1, 100_000, "[]"),
    ("gan train", "--batch-size", int, 1, 100_000, "[]"),
    ("gan train", "--image-size", int, 16, 1024, "[]"),
    ("gan train", "--nz", int, 1, 4096, "[]"),
    ("gan train", "--ngf", int, 1, 1024, "[]"),
    ("gan train", "--ndf", int, 1, 1024, "[]"),
    ("gan train", "--lr", float, 0, F32, "(]"),
    ("gan train", "--beta1", float, 0, 1, "[)"),
    ("gan train", "--max-images", int, 1, 10**9, "[]"),
    ("gan train", "--checkpoint-every", int, 0, 100_000, "[]"),
    ("gan train", "--seed", int, 0, 2**32 - 1, "[]"),
    ("gan sample", "--n", int, 1, 1_000_000, "[]"),
    ("gan sample", "--seed", int, 0, 2**32 - 1, "[]"),
    ("gan quality", "--size", int, 8, 1024, "[]"),
    ("gan quality", "--folds", int, 2, 100, "[]"),
    ("gan quality", "--cnn-steps", int, 0, 100_000, "[]"),
    ("gan quality", "--seed", int, 0, 2**32 - 1, "[]"),
    ("autoencoder train", "--image-size", int, 8, 1024, "[]"),
    ("autoencoder train", "--latent", int, 1, 4096, "[]"),
    ("autoencoder train", "--depth", int, 1, 8, "[]"),
    ("autoencoder train", "--epochs", int, 1, 100_000, "[]"),
    ("autoencoder train", "--batch-size", int, 1, 100_000, "[]"),
    ("autoencoder train", "--lr", float, 0, F32, "(]"),
    ("autoencoder train", "--seed", int, 0, 2**32 - 1, "[]"),
    ("autoencoder train", "--max-per-class", int, 1, 10**9, "[]"),
    ("autoencoder encode", "--batch-size", int, 1, 100_000, "[]"),
    ("lungs train", "--size", int, 32, 512, "[]"),
    ("lungs train", "--epochs", int, 1, 100_000, "[]"),
    ("lungs train", "--width", int, 1, 256, "[]"),
    ("lungs train", "--seed", int, 0, 2**32 - 1, "[]"),
    ("demo", "--epochs", int, 1, 100_000, "[]"),
]
#: (command, option) taking a name: an unknown one must be one line that quotes it
NAMES = [
    ("train", "--model"), ("train", "--optimizer"), ("train", "--device"), ("train", "--devices"),
    ("train", "--strategy"), ("train", "--precision"), ("train", "--val-split"), ("train", "--labels-format"),
    ("train", "--freeze"), ("train", "--seeds"), ("train", "--label-map"), ("train", "--classes"),
    ("prepare", "--model"), ("summary", "--freeze"), ("summary", "--layers"),
    ("audit", "--labels-format"), ("audit", "--classes"),
    ("evaluate", "--device"), ("evaluate", "--labels-format"), ("evaluate", "--classes"),
    ("bench", "--models"), ("bench", "--precision"), ("bench", "--devices"),
    ("sweep", "--sampler"), ("sweep", "--storage"), ("reproduce", "--budget"), ("export", "--format"),
    ("serve", "--method"), ("explain", "--method"), ("explain", "--class"), ("explain", "--layer"),
    ("gan train", "--class"), ("gan train", "--device"), ("gan sample", "--device"),
    ("autoencoder train", "--device"), ("autoencoder train", "--classes"),
]  # fmt: skip


@pytest.fixture(scope="module")
def base_yaml(tmp_path_factory, images) -> Path:
    path = tmp_path_factory.mktemp("sweep") / "base.yaml"
    path.write_text(
        f"data:\n  path: {images}\n  image_size: 32\nmodel:\n  name: small_cnn\n"
        "train:\n  epochs: 1\n  tensorboard: false\neval:\n  tsne: false\n  bootstrap: 50\n"
    )
    return path


@pytest.fixture(scope="module")
def command_line(request, images, scratch):
    """``command_line(command, out) -> args``: the command with everything it needs but the option under
    test; what needs the trained run or the sweep config asks for the fixture only then."""

    def args(command: str, out: Path) -> list[str]:
        missing = str(out.parent / "missing")  # for commands whose option is checked before their input
        run = lambda: str(request.getfixturevalue("run"))  # noqa: E731 - trained only when asked for
        lines = {
            "train": lambda: [*TRAIN, "--data", str(images)],
            "prepare": lambda: ["prepare", "--data", str(images), "--model", "small_cnn"],
            "summary": lambda: ["summary", "small_cnn"],
            "audit": lambda: ["audit", str(images)],
            "evaluate": lambda: ["evaluate", run(), "--data", str(images)],
            "bench": lambda: ["bench", "--models", "small_cnn", "--steps", "1", "--warmup", "0",
                              "--devices", "cpu"],
            "sweep": lambda: ["sweep", "--config", str(request.getfixturevalue("base_yaml")),
                              "--param", "lr=1e-3"],
            "reproduce": lambda: ["reproduce", "--list"],
            "export": lambda: ["export", missing],
            "explain": lambda: ["explain", run(), str(images / "a" / "0.png")],
            "serve": lambda: ["serve", missing, "--host", "nohost.invalid"],
            "gan train": lambda: ["gan", "train", "--data", str(images), "--class", "a", "--epochs", "1",
                                  "--image-size", "16", "--ngf", "8", "--ndf", "8", "-q"],
            "gan sample": lambda: ["gan", "sample", missing],
            "gan quality": lambda: ["gan", "quality", missing, "--data", str(images), "-q"],
            "autoencoder train": lambda: ["autoencoder", "train", "--data", str(images), "--epochs", "1",
                                          "--image-size", "32", "-q"],
            "autoencoder encode": lambda: ["autoencoder", "encode", missing],
            "lungs train": lambda: ["lungs", "train", "--data", missing],
            "demo": lambda: ["demo"],
        }  # fmt: skip
        has_out = command not in ("summary", "reproduce", "prepare", "serve")
        return lines[command]() + (["--out", str(out)] if has_out else [])

    return args


def bad_numbers(kind: type, low, high, inclusive: str) -> st.SearchStrategy[str]:
    """Command-line text that is not an accepted value: NaN, infinities, huge and negative numbers, values
    just outside the bounds, and (for whole-number options) text that is no whole number."""

    def accepted(x: float) -> bool:
        over_low = low is None or (x >= low if inclusive[0] == "[" else x > low)
        under_high = high is None or (x <= high if inclusive[1] == "]" else x < high)
        return math.isfinite(x) and over_low and under_high

    def bad(text: str) -> bool:
        if kind is int:
            return not text.lstrip("-").isdigit() or not accepted(int(text))
        return not accepted(float(text))

    fixed = ["nan", "inf", "-inf", "1e300", "-1e300", "99999999999999999999", "-99999999999999999999", "-1"]
    fixed += ["2.5", "1e3", "0x10"] if kind is int else [repr(float(low)), repr(float(high))]
    fixed = [v for v in fixed if bad(v)]
    if kind is int:
        below = st.integers(max_value=low - 1, min_value=-(10**30)) if low is not None else st.nothing()
        above = st.integers(min_value=high + 1, max_value=10**30) if high is not None else st.nothing()
        return st.one_of(st.sampled_from(fixed), below.map(str), above.map(str))
    floats = st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not accepted(x)).map(repr)
    return st.one_of(st.sampled_from(fixed), floats)


@pytest.mark.parametrize(("command", "option", "kind", "low", "high", "inclusive"), NUMERIC,
                         ids=[f"{c}{o}" for c, o, *_ in NUMERIC])  # fmt: skip
@_settings(4)
@given(data=st.data())
def test_any_bad_number_for_any_option_is_one_line(command_line, scratch, data, command, option, kind, low,
                                                   high, inclusive):  # fmt: skip
    value = data.draw(bad_numbers(kind, low, high, inclusive), label="value")
    out = scratch()
    line = refused(run_cli_inprocess(*command_line(command, out), option, value))
    assert option in line or option.lstrip("-").replace("-", "_") in line or "Invalid value" in line, line
    assert not out.exists()


@pytest.mark.parametrize(("command", "option"), NAMES, ids=[f"{c}{o}" for c, o in NAMES])
@_settings(4)
@given(name=st.from_regex(r"[A-Za-z][A-Za-z0-9_.]{0,10}", fullmatch=True).map(lambda s: s + "_zz9"))
def test_any_unknown_name_for_any_option_is_one_line(command_line, scratch, command, option, name):
    """Names no option accepts (each ends in _zz9, so none is a model, class, strategy or method)."""
    out = scratch()
    line = refused(run_cli_inprocess(*command_line(command, out), option, name))
    assert name in line or name.lower() in line, line
    assert not out.exists()
