"""Shared fixtures: real datasets from ../shared/data (skipped with a reason when absent).

Under ``CXRLAB_REQUIRE_ALL=1`` (set by ``.ci/run``) a skip of any kind is a failure: a missing dataset,
weights file, browser, PostgreSQL server or optional package must never let CI go green untested."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
REQUIRE_ALL = os.environ.get("CXRLAB_REQUIRE_ALL", "") not in ("", "0")
WEIGHTS = SHARED / "weights" / "torch"
COVID = DATA / "covid-challenge"
KERMANY = DATA / "kermany-224"
PNEUMONIAMNIST = DATA / "pneumoniamnist" / "pneumoniamnist.npz"


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(
            f"{what} not found at {path}: clone cxrlab beside a `shared/` folder holding the datasets "
            "(see shared/data/README.md); CI always has it"
        )
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With CXRLAB_REQUIRE_ALL set, turn every skip into a failure that keeps the skip's reason."""
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CXRLAB_REQUIRE_ALL=1 (a prerequisite is missing): {reason}"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests share one image cache (CI may point CXRLAB_CACHE_DIR at a persistent one)."""
    if not os.environ.get("CXRLAB_CACHE_DIR"):
        os.environ["CXRLAB_CACHE_DIR"] = str(tmp_path_factory.mktemp("cxrlab-cache"))
    os.environ.setdefault("TORCH_HOME", str(WEIGHTS))
    yield


@pytest.fixture(scope="session")
def covid_dir() -> Path:
    return _need(COVID, "covid-challenge dataset")


@pytest.fixture(scope="session")
def kermany_dir() -> Path:
    return _need(KERMANY, "kermany-224 dataset")


@pytest.fixture(scope="session")
def pneumoniamnist_npz() -> Path:
    return _need(PNEUMONIAMNIST, "pneumoniamnist.npz")


@pytest.fixture(scope="session")
def torch_home() -> Path:
    return _need(
        WEIGHTS / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth", "MobileNetV2 ImageNet weights"
    )


@pytest.fixture()
def small_covid(tmp_path, covid_dir) -> Path:
    """A tiny copy of covid-challenge (real images): train 12/class, test 6/class, covid + normal."""
    root = tmp_path / "covid-small"
    for split, n in (("train", 12), ("test", 6)):
        for cls in ("covid", "normal"):
            dst = root / split / cls
            dst.mkdir(parents=True)
            for f in sorted((covid_dir / split / cls).iterdir())[:n]:
                shutil.copy(f, dst / f.name)
    return root


# Variables cxrlab reads when a module is imported: a call that sets one needs a fresh process.
IMPORT_TIME_ENV = frozenset({"CXRLAB_MAX_PIXELS", "CXRLAB_IMAGE_ENTRY_LIMIT"})


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    check: bool = False,
    subprocess_: bool = False,
) -> subprocess.CompletedProcess:
    """Run ``cxr ARGS``: in this process by default (``cxrlab.cli.main``, the entry point's own code, with
    its exit status and its stdout/stderr captured), in a real subprocess with ``subprocess_=True`` or when
    ``env`` sets a variable read at import time. Starting torch and Lightning costs 5-8 s per process on
    2 cores; tests where the process boundary is the point (signals, locks held by another process, fork,
    the service, import-time settings) use a subprocess."""
    if subprocess_ or (env and IMPORT_TIME_ENV & set(env)) or _launches_processes(args):
        return run_cli_subprocess(*args, env=env, timeout=timeout, check=check)
    return run_cli_inprocess(*args, env=env, check=check)


def _launches_processes(args: tuple[str, ...]) -> bool:
    """DDP (``--strategy``, ``--devices N`` with N > 1) re-launches the command line as more processes."""
    if "--strategy" in args:
        return True
    return any(a == "--devices" and i + 1 < len(args) and args[i + 1] != "1" for i, a in enumerate(args))


def run_cli_subprocess(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600, check: bool = False
) -> subprocess.CompletedProcess:
    """Run the real `cxr` entry point in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "cxrlab", *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )
    return _checked(proc, args, check)


def run_cli_inprocess(
    *args: str, env: dict[str, str] | None = None, check: bool = False
) -> subprocess.CompletedProcess:
    """Call ``cxrlab.cli.main()`` with ``sys.argv = ["cxr", *args]`` in this process.

    stdout and stderr are captured as a subprocess's would be (not a TTY), including what loggers
    created at import time write to the real stderr; ``env`` is set for the call and restored after;
    the exit status is the ``SystemExit`` code (0 when main returns). ``CXRLAB_NO_FAST_EXIT`` keeps
    main from ending the interpreter with ``os._exit`` after a success."""
    import io
    import logging

    from cxrlab.cli import main

    overrides = {"CXRLAB_NO_FAST_EXIT": "1", **(env or {})}
    saved_env = {key: os.environ.get(key) for key in overrides}
    saved_argv, saved_out, saved_err = sys.argv, sys.stdout, sys.stderr
    out, err = io.StringIO(), io.StringIO()
    handlers = [
        handler
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        for handler in getattr(logger, "handlers", [])
        if isinstance(handler, logging.StreamHandler)
        and getattr(handler, "stream", None) in (saved_out, saved_err, sys.__stdout__, sys.__stderr__)
    ]
    handler_streams = [(handler, handler.stream) for handler in handlers]
    code: int | str | None = 0
    try:
        os.environ.update(overrides)
        sys.argv = ["cxr", *args]
        sys.stdout, sys.stderr = out, err
        for handler, stream in handler_streams:
            handler.setStream(out if stream in (saved_out, sys.__stdout__) else err)
        try:
            main()
        except SystemExit as exc:
            code = exc.code
    finally:
        sys.argv, sys.stdout, sys.stderr = saved_argv, saved_out, saved_err
        for handler, stream in handler_streams:
            handler.setStream(stream)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed to stderr, status 1
        err.write(f"{code}\n")
        code = 1
    proc = subprocess.CompletedProcess(["cxr", *args], code, out.getvalue(), err.getvalue())
    return _checked(proc, args, check)


def _checked(proc: subprocess.CompletedProcess, args: tuple[str, ...], check: bool):
    if check and proc.returncode != 0:
        raise AssertionError(
            f"cxr {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc
