"""Decode once: an on-disk cache of resized uint8 arrays, and of frozen-backbone features.

Entries are plain ``.npy`` files read with ``allow_pickle=False`` (nothing executable is ever
loaded). An image entry is keyed by the file's real path, size and modification time plus the
target size and resize mode, so an edited file is decoded again. Failed decodes are remembered
too (a small ``.bad`` text file), so a warm run does not retry a broken file.

Location: ``--cache-dir``, else ``$CXRLAB_CACHE_DIR``, else ``~/.cache/cxrlab``.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from cxrlab.data.images import ImageReadError, load_gray

CACHE_VERSION = "1"


def default_cache_dir(explicit: str | None = None) -> Path:
    """Resolve the cache folder from the option, the environment, or the user cache."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("CXRLAB_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cxrlab"


def file_key(path: str, size: int, resize: str) -> str:
    """Cache key of one decoded image: file identity + target geometry."""
    st = os.stat(path)
    ident = f"{os.path.realpath(path)}|{st.st_size}|{st.st_mtime_ns}|{size}|{resize}|v{CACHE_VERSION}"
    return hashlib.sha1(ident.encode()).hexdigest()


def digest(parts: Sequence[str]) -> str:
    """Stable hash of a list of strings (used to key feature caches)."""
    h = hashlib.sha1()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


_WARNED: list[bool] = []


def _skip_cache(folder: Path, exc: OSError) -> None:
    """Warn once per process that the cache is skipped: it is an optimisation, never a failure."""
    if _WARNED:
        return
    _WARNED.append(True)
    why = exc.strerror or exc.__class__.__name__
    print(
        f"warning: cannot write to the cache {folder} ({why}); continuing without caching "
        "(free space there or set --cache-dir)",
        file=sys.stderr,
    )


def save_npy(path: Path, array: np.ndarray) -> bool:
    """Write a cache entry atomically (an interrupted run never leaves half an entry). A cache that
    cannot be written (full disk, read-only, …) is skipped with one warning; returns whether it was."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        os.replace(tmp, path)
        return True
    except OSError as exc:
        _skip_cache(path.parents[2] if path.parent.parent.name == "images" else path.parents[1], exc)
        return False
    finally:
        if tmp is not None and os.path.exists(tmp):
            Path(tmp).unlink(missing_ok=True)


def load_npy(path: Path) -> np.ndarray | None:
    """Read a cache entry; a damaged entry counts as missing."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None


def _decode(args: tuple[str, int, str]) -> tuple[np.ndarray | None, str | None]:
    path, size, resize = args
    try:
        return load_gray(path, size, resize), None
    except ImageReadError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - a decoder bug on one odd file must not stop the run
        return None, f"{exc.__class__.__name__}: {exc}"


class ImageCache:
    """Decoded, resized images on disk, shared by all runs."""

    def __init__(self, root: str | Path | None = None, enabled: bool = True):
        self.root = default_cache_dir(str(root) if root else None)
        self.enabled = enabled
        if enabled:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                probe = self.root / ".write-test"
                probe.write_text("ok")
                probe.unlink()
            except OSError as exc:
                _skip_cache(self.root, exc)
                self.enabled = False  # read-only or full: decode every time, still correct

    def _entry(self, key: str, suffix: str = ".npy") -> Path:
        return self.root / "images" / key[:2] / f"{key}{suffix}"

    def load_many(
        self,
        paths: Sequence[str],
        size: int,
        resize: str = "squash",
        progress: Callable[[int], None] | None = None,
    ) -> tuple[list[np.ndarray | None], dict[str, str]]:
        """Return one array per path (``None`` for unreadable files) and the reasons for failures."""
        results: list[np.ndarray | None] = [None] * len(paths)
        failures: dict[str, str] = {}
        todo: list[int] = []
        keys: list[str | None] = [None] * len(paths)
        for i, path in enumerate(paths):
            try:
                keys[i] = file_key(path, size, resize)
            except OSError as exc:
                failures[path] = f"cannot read file: {exc.strerror or exc}"
                continue
            if self.enabled:
                hit = load_npy(self._entry(keys[i]))
                if hit is not None and hit.shape == (size, size):
                    results[i] = hit
                    continue
                bad = self._entry(keys[i], ".bad")
                if bad.exists():
                    failures[path] = bad.read_text(encoding="utf-8", errors="replace")
                    continue
            todo.append(i)
        if progress:
            progress(len(paths) - len(todo))
        for i, (array, error) in zip(
            todo, _decode_all([(paths[i], size, resize) for i in todo], progress), strict=True
        ):
            key = keys[i]
            if array is None:
                failures[paths[i]] = error or "unreadable"
                if self.enabled and key:
                    bad = self._entry(key, ".bad")
                    try:
                        bad.parent.mkdir(parents=True, exist_ok=True)
                        bad.write_text(failures[paths[i]], encoding="utf-8")
                    except OSError as exc:
                        _skip_cache(self.root, exc)
                        self.enabled = False
                continue
            results[i] = array
            if self.enabled and key and not save_npy(self._entry(key), array):
                self.enabled = False  # full or read-only: stop trying for the rest of the run
        return results, failures

    def features_path(self, key: str) -> Path:
        """Where frozen-backbone features with this key live."""
        return self.root / "features" / f"{key}.npy"


def _decode_all(jobs: list[tuple[str, int, str]], progress: Callable[[int], None] | None):
    """Decode in parallel worker processes when there is enough work to pay for them."""
    workers = min(os.cpu_count() or 1, 8)
    if len(jobs) < 48 or workers < 2:
        for job in jobs:
            out = _decode(job)
            if progress:
                progress(1)
            yield out
        return
    ctx = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_signals)
    try:
        for out in pool.map(_decode, jobs, chunksize=8):
            if progress:
                progress(1)
            yield out
    except BaseException:  # Ctrl-C: do not decode the rest first
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _worker_signals() -> None:
    """Decoding workers leave Ctrl-C to the main process (which stops them): no tracebacks from them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
