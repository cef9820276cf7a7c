"""Optional dependencies (cxrlab._optional): a command whose extra is missing says in one line what to get.

The dev environment has every extra installed, so the child process below hides some (``None`` in
``sys.modules``: ``import fastapi`` raises ModuleNotFoundError and ``importlib.util.find_spec`` finds nothing,
as on a base install) and then runs the real ``cxr`` entry point (``cxrlab.cli.main``) several times in that
one process. scripts/check_wheel.sh checks the same on a real base install of the wheel.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cxrlab._optional import MissingDependencyError, message, require
from cxrlab.errors import CxrError

BLOCKED = ["fastapi", "starlette", "uvicorn", "python_multipart", "onnx", "onnxruntime", "onnxscript",
           "optuna", "pytorch_grad_cam", "pydicom", "torchxrayvision", "timm", "pynetdicom"]  # fmt: skip

CHILD = r"""
import contextlib, io, json, sys
for name in json.loads(sys.argv[1]):
    sys.modules[name] = None  # `import name` raises ModuleNotFoundError, find_spec(name) is None
from cxrlab.cli import main

results = []
for argv in json.loads(sys.argv[2]):
    sys.argv = ["cxr", *argv]
    err, out = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main()
        except SystemExit as exc:
            code = exc.code
    results.append({"argv": argv, "code": code, "stderr": err.getvalue(), "stdout": out.getvalue()})

from cxrlab.explain.report import why_not
from types import SimpleNamespace
results.append({"why_not": why_not(SimpleNamespace(meta={"task": "single"}), "auto")})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def blocked_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("optional")
    recipe = Path(__file__).resolve().parents[1] / "src" / "cxrlab" / "recipes" / "fast_pneumoniamnist.yaml"
    commands = [
        ["serve", str(tmp / "no-run")],
        ["export", str(tmp / "no-run"), "--format", "onnx", "--out", str(tmp / "m.onnx")],
        ["sweep", "--config", str(recipe), "--param", "lr=1e-3,1e-4", "--out", str(tmp / "sweep")],
        ["node", str(tmp / "no-run"), "--out", str(tmp / "node"), "--watch", "http://127.0.0.1:9/dicom-web"],
    ]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(BLOCKED), json.dumps(commands)],
        capture_output=True, text=True, timeout=300, cwd=tmp,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return {" ".join(r["argv"][:1]) if "argv" in r else "why_not": r for r in results}


@pytest.mark.parametrize(
    ("command", "extra", "dist"),
    [("serve", "serve", "fastapi"), ("export", "export", "onnx"), ("sweep", "sweep", "optuna"),
     ("node", "pacs", "pynetdicom")],  # fmt: skip
)
def test_a_command_without_its_extra_says_in_one_line_what_to_install(blocked_runs, command, extra, dist):
    result = blocked_runs[command]
    lines = result["stderr"].strip().splitlines()
    assert result["code"] == 2, result
    assert len(lines) == 1, result["stderr"]
    assert "Traceback" not in result["stderr"]
    assert lines[0].startswith("error: ") and f"the optional dependency {dist}" in lines[0]
    assert lines[0].endswith(f"pip install 'cxrlab[{extra}]'"), lines[0]


def test_without_grad_cam_the_report_says_the_gallery_needs_the_explain_extra(blocked_runs):
    status, note = blocked_runs["why_not"]["why_not"]
    assert status == "skipped"
    assert note == (
        "the Grad-CAM gallery needs the optional dependency grad-cam: pip install 'cxrlab[explain]'"
    )


def test_require_returns_the_module_and_names_the_extra_when_missing():
    assert require("json") is json
    with pytest.raises(MissingDependencyError) as info:
        require("cxrlab_no_such_package_xyz", "serve", "cxr serve")
    exc = info.value
    assert isinstance(exc, CxrError) and isinstance(exc, ImportError)
    assert exc.extra == "serve" and exc.name == "cxrlab_no_such_package_xyz"
    assert str(exc) == (
        "cxr serve needs the optional dependency cxrlab_no_such_package_xyz: pip install 'cxrlab[serve]'"
    )


def test_the_message_names_the_pip_distribution_and_the_extra_from_the_import_name():
    assert message("Grad-CAM", "pytorch_grad_cam.utils.image") == (
        "Grad-CAM needs the optional dependency grad-cam: pip install 'cxrlab[explain]'"
    )
    assert message("DICOM input", "pydicom") == (
        "DICOM input needs the optional dependency pydicom: pip install 'cxrlab[dicom]'"
    )


def test_every_extra_named_by_the_helper_exists_in_pyproject():
    import tomllib

    from cxrlab._optional import EXTRAS

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS.values()) <= set(extras)
    assert {"dicom", "serve", "export", "sweep", "explain", "xrv", "timm", "all", "dev"} <= set(extras)
