"""Optional dependencies: the one place an extra's missing package becomes a one-line message.

The base install (``pip install cxrlab``) is a trainer. DICOM input, the HTTP server, ONNX export, sweeps,
Grad-CAM, torchxrayvision and timm backbones each live in an extra (``pip install 'cxrlab[serve]'``, …,
``cxrlab[all]``). Code that needs one of those packages imports it through :func:`require`, at the point of
use, never at a module's top level that the trainer imports::

    uvicorn = require("uvicorn", "serve", "cxr serve")

A missing package raises :class:`MissingDependencyError`: a :class:`~cxrlab.errors.CxrError` (the CLI
prints it as one line, no traceback) and an :class:`ImportError` (library code that catches ImportError to
fall back still does).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from cxrlab.errors import CxrError

#: The extra each optional import name belongs to (the ``pyproject.toml`` extras).
EXTRAS: dict[str, str] = {
    "pydicom": "dicom",
    "gdcm": "dicom",
    "pylibjpeg": "dicom",
    "openjpeg": "dicom",
    "fastapi": "serve",
    "starlette": "serve",
    "uvicorn": "serve",
    "python_multipart": "serve",
    "multipart": "serve",
    "onnx": "export",
    "onnxruntime": "export",
    "onnxscript": "export",
    "optuna": "sweep",
    "pytorch_grad_cam": "explain",
    "torchxrayvision": "xrv",
    "timm": "timm",
    "psycopg2": "postgres",
    "fairlearn": "fairness",
    "pynetdicom": "pacs",
    "highdicom": "pacs",
    "dicomweb_client": "pacs",
}

#: The distribution (what ``pip install`` takes) where it differs from the import name.
DISTRIBUTIONS: dict[str, str] = {
    "pytorch_grad_cam": "grad-cam",
    "gdcm": "python-gdcm",
    "python_multipart": "python-multipart",
    "multipart": "python-multipart",
    "openjpeg": "pylibjpeg-openjpeg",
    "psycopg2": "psycopg2-binary",
    "dicomweb_client": "dicomweb-client",
}


class MissingDependencyError(CxrError, ImportError):
    """An optional package is not installed; the message names the extra that brings it."""

    exit_code = 2

    def __init__(self, message: str, *, module: str, extra: str):
        super().__init__(message)
        self.msg = message
        self.name = module
        self.extra = extra


def message(feature: str, module: str, extra: str | None = None, reason: str = "") -> str:
    """``FEATURE needs the optional dependency DIST: pip install 'cxrlab[EXTRA]'`` (one line)."""
    top = module.split(".")[0]
    extra = extra or EXTRAS.get(top, "all")
    dist = DISTRIBUTIONS.get(top, top)
    why = f" ({reason})" if reason else ""
    return f"{feature} needs the optional dependency {dist}{why}: pip install 'cxrlab[{extra}]'"


def available(module: str) -> bool:
    """Whether ``module`` can be found, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a half-removed module
        return False


def require(module: str, extra: str | None = None, feature: str | None = None) -> ModuleType:
    """Import ``module`` (e.g. ``"fastapi"``, ``"optuna.visualization.matplotlib"``) or raise
    :class:`MissingDependencyError` naming ``feature`` and the extra to install.

    ``extra`` defaults to the module's entry in :data:`EXTRAS`; ``feature`` (what the user asked for, e.g.
    ``"cxr serve"``) to ``"this command"``. When the package is installed but one of *its* imports fails,
    the message says so in the same line."""
    top = module.split(".")[0]
    extra = extra or EXTRAS.get(top, "all")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or ""
        reason = "" if missing.split(".")[0] == top or not missing else f"it cannot import {missing}"
        if reason == "" and missing == "" and available(top):
            reason = " ".join(str(exc).splitlines())[:160]
        raise MissingDependencyError(
            message(feature or "this command", module, extra, reason), module=module, extra=extra
        ) from None
