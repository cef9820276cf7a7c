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

    for module in ("core", "zoo", "audit", "experiments", "generative"):
        try:
            importlib.import_module(f"cxrlab.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"cxrlab.cli.{module}":
                raise


_register()


def main() -> None:
    """Entry point of the `cxr` script."""
    from cxrlab.errors import CxrError

    try:
        app()
    except CxrError as exc:
        print(f"error: {exc}", file=sys.stderr)
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
