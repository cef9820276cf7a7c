"""User-facing errors: one line saying what is wrong and what to do."""

from __future__ import annotations


class CxrError(Exception):
    """An error caused by the user's input; the CLI prints it as one line and exits non-zero."""

    exit_code = 2


class DataError(CxrError):
    """The data folder or file cannot be used as given."""


class ConfigError(CxrError):
    """The configuration has an unknown key, a wrong type or an impossible value."""


class ModelError(CxrError):
    """A model cannot be built or loaded (unknown name, missing weights, corrupted checkpoint)."""
