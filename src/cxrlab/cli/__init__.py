"""The `cxr` command line: a thin layer over the Python API.

Each feature registers its commands on :data:`app` from its own module below; errors that are
the user's to fix (:class:`cxrlab.errors.CxrError`) print as one line and exit non-zero.
"""

from __future__ import annotations

import os
import sys

import typer

app = typer.Typer(
    name="cxr",
    help="cxrlab — train, compare and explain chest X-ray classifiers, honestly, on a laptop CPU.\n\n"
    "Start with `cxr demo`, then `cxr train --data FOLDER --out RUN`. Every command has --help.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


def _register() -> None:
    import importlib

    modules = ("core", "data", "zoo", "audit", "experiments", "generative", "reproduce", "deploy", "explain")
    for module in modules:
        try:
            importlib.import_module(f"cxrlab.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"cxrlab.cli.{module}":
                raise


_register()


def main() -> None:
    """Entry point of the `cxr` script."""
    from cxrlab.errors import CxrError

    try:  # typer >= 0.2x carries its own copy of click
        from typer._click import exceptions as click_errors
        from typer.exceptions import Abort
    except ImportError:  # pragma: no cover - older typer on the user's click
        from click import exceptions as click_errors
        from click.exceptions import Abort

    try:
        code = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:  # `cxr` or `cxr gan` alone: the help, as asked
        print(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(0)
    except click_errors.UsageError as exc:  # a wrong flag or value: one line, and where to look
        where = f"`{exc.ctx.command_path} --help`" if exc.ctx else "`cxr --help`"
        message = " ".join(exc.format_message().splitlines())
        print(f"error: {message} (see {where})", file=sys.stderr)
        sys.exit(2)
    except click_errors.ClickException as exc:  # e.g. a file option that cannot be opened
        print(f"error: {' '.join(exc.format_message().splitlines())}", file=sys.stderr)
        sys.exit(exc.exit_code or 1)
    except Abort:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit as exc:
        if exc.code in (0, None):
            _fast_exit()
        raise
    except CxrError as exc:
        message = " ".join(str(exc).splitlines())  # one line, whatever a message quotes
        print(f"error: {message}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - last line of defence: no tracebacks for users
        if os.environ.get("CXRLAB_DEBUG"):
            raise
        print(
            f"internal error: {exc.__class__.__name__}: {exc} (rerun with CXRLAB_DEBUG=1 for the traceback, "
            "and please report it)",
            file=sys.stderr,
        )
        sys.exit(1)
    if isinstance(code, int) and code != 0:  # a command (or --help) asked for this exit status
        sys.exit(code)
    _fast_exit()


def _fast_exit() -> None:
    """End a finished command without the interpreter's teardown.

    With torch, torchvision and Lightning loaded, tearing the interpreter down takes 1.4 s on a 2-core
    CPU (measured; docs/benchmarks.md section 1) after every file is already written. So once a command
    has succeeded: run the ``atexit`` handlers (logging, multiprocessing, loggers), flush stdout/stderr and
    leave with ``os._exit(0)``. Skipped when torch was never imported (nothing to gain), while any
    non-daemon thread is still running, and when ``CXRLAB_NO_FAST_EXIT`` is set (profilers and coverage
    tools that write their results at interpreter exit)."""
    import atexit
    import threading

    if "torch" not in sys.modules or os.environ.get("CXRLAB_NO_FAST_EXIT"):
        return
    current = threading.current_thread()
    if any(t is not current and t.is_alive() and not t.daemon for t in threading.enumerate()):
        return
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if run_exitfuncs is None:  # not CPython: exit the ordinary way
        return
    run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(0)
