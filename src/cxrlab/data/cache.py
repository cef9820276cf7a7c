"""Decode once: an on-disk cache of resized uint8 arrays, and of frozen-backbone features.

Entries are plain ``.npy`` files read with ``allow_pickle=False`` (nothing executable is ever
loaded). An image entry is keyed by the file's real path, size and modification time plus the
target size and resize mode, so an edited file is decoded again. Failed decodes are remembered
too (a small ``.bad`` text file), so a warm run does not retry a broken file.

Location: ``--cache-dir``, else ``$CXRLAB_CACHE_DIR``, else ``~/.cache/cxrlab``.

Training reads each split from a **store** (:meth:`ImageCache.store`): one ``(N, H, W)`` uint8 ``.npy``
file per split under ``CACHE/store/`` plus a JSON sidecar, opened as a **read-only** memory map
(``np.load(mmap_mode="r")``), so DDP ranks on one node share the OS page cache and nothing writes into a
store by mistake. Readers copy the rows they use (:class:`~cxrlab.data.prepare.ImageArrayDataset` one row
per item, :func:`~cxrlab.data.prepare.to_tensor` one batch): the pixels stay clean file-backed pages of the
page cache, which the kernel reclaims under pressure, and the process's anonymous memory does not grow
with the number of images (docs/benchmarks.md §11.6). The per-image
entries (``CACHE/images/``) stay for datasets of up to :data:`IMAGE_ENTRY_LIMIT` images: they let runs
with other splits (another seed, other fractions) reuse decoded images. Larger datasets only read
per-image entries that already exist, and write the store alone (no second copy).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from cxrlab.data.dicom import DECODE_VERSION as DICOM_DECODE_VERSION
from cxrlab.data.dicom import is_dicom
from cxrlab.data.images import ImageReadError, load_gray

CACHE_VERSION = "1"
STORE_VERSION = "1"
# Datasets with at most this many images also keep one .npy per decoded image (shared across splits).
IMAGE_ENTRY_LIMIT = int(os.environ.get("CXRLAB_IMAGE_ENTRY_LIMIT", "20000"))


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
    if is_dicom(path):  # a change of the DICOM pixel pipeline re-decodes DICOMs only
        ident += f"|dicom{DICOM_DECODE_VERSION}"
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
        todo: list[int] = []
        keys, failures = _file_keys(paths, size, resize)
        for i, path in enumerate(paths):
            if keys[i] is None:
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

    def store(
        self,
        paths: Sequence[str],
        size: int,
        resize: str = "squash",
        progress: Callable[[int], None] | None = None,
        entries: bool = True,
    ) -> tuple[np.ndarray, list[int], list[str], dict[str, str]]:
        """Decode ``paths`` into one ``(n, size, size)`` uint8 array, row by row.

        With a writable cache the array is a store file opened with memory mapping (built once, then
        reused; an interrupted build resumes from its last checkpoint); otherwise it is decoded into
        RAM. Returns the array, the positions in ``paths`` of its rows, their cache keys and the
        reasons for the unreadable files (left out). ``entries``: also write one cache entry per image.
        ``self.decoded`` counts the images decoded by this call."""
        self.decoded = 0
        all_keys, failures = _file_keys(paths, size, resize)
        valid = [i for i, key in enumerate(all_keys) if key is not None]
        keys = [all_keys[i] for i in valid]
        if progress and failures:
            progress(len(failures))
        name = digest([f"store|v{STORE_VERSION}|{size}|{resize}", *keys])
        folder = self.root / "store"
        got = self._open_store(folder, name, len(keys), size) if self.enabled else None
        if got is None and self.enabled:
            lock = None
            try:
                folder.mkdir(parents=True, exist_ok=True)
                lock = open(folder / f"{name}.lock", "w")  # noqa: SIM115 - held until the build ends
                fcntl.flock(lock, fcntl.LOCK_EX)  # two runs on the same data: one builds, one waits
            except OSError:
                pass
            try:
                got = self._open_store(folder, name, len(keys), size)
                if got is None:
                    got = self._build(folder, name, [paths[i] for i in valid], keys, size, resize, progress,
                                      entries)  # fmt: skip
                elif progress:
                    progress(len(keys))
            finally:
                if lock is not None:
                    lock.close()
        elif got is not None and progress:
            progress(len(keys))
        if got is None:  # no usable cache: decode into RAM (one copy, filled row by row)
            empty = np.empty((len(keys), size, size), np.uint8)
            got = self._fill(empty, np.zeros(len(keys), np.int8), {}, [paths[i] for i in valid], keys, size,
                             resize, progress, False, None)  # fmt: skip
        array, failed = got
        for row, reason in failed.items():
            failures[paths[valid[row]]] = reason
        kept = [r for r in range(len(keys)) if r not in failed]
        return array, [valid[r] for r in kept], [keys[r] for r in kept], failures

    def _open_store(self, folder: Path, name: str, n: int, size: int) -> tuple[np.ndarray, dict] | None:
        """A complete store (its sidecar is written before the array takes its final name), or ``None``."""
        try:
            info = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
            failed = {int(k): str(v) for k, v in info["failed"].items()}
            rows = n - len(failed)
            if rows == 0:
                return np.zeros((0, size, size), np.uint8), failed
            # read-only: a write raises instead of diverging from the file (readers copy their rows)
            array = np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        if info.get("rows") != n or array.shape != (rows, size, size) or array.dtype != np.uint8:
            return None
        return array, failed

    def _build(
        self,
        folder: Path,
        name: str,
        paths: list[str],
        keys: list[str],
        size: int,
        resize: str,
        progress: Callable[[int], None] | None,
        entries: bool,
    ) -> tuple[np.ndarray, dict] | None:
        """Fill ``NAME.partial.npy`` (resuming from ``NAME.done.npy``: 0 to do, 1 decoded, 2 unreadable),
        then give it its final name. ``None`` when the cache cannot hold it (the caller decodes in RAM)."""
        n = len(keys)
        partial, done, why = (folder / f"{name}.{s}" for s in ("partial.npy", "done.npy", "failed.json"))
        array = None
        try:
            if partial.exists() and done.exists():
                array = np.lib.format.open_memmap(partial, mode="r+")
                state = np.load(done, allow_pickle=False)
                reasons = json.loads(why.read_text(encoding="utf-8")) if why.exists() else {}
                if array.shape != (n, size, size) or state.shape != (n,):
                    array = None
        except (OSError, ValueError, EOFError):
            array = None
        if array is None:
            try:
                array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(n, size, size))
                _allocate(partial)
            except OSError as exc:
                _skip_cache(self.root, exc)
                partial.unlink(missing_ok=True)
                self.enabled = False
                return None
            state, reasons = np.zeros(n, np.int8), {}

        def checkpoint() -> None:  # rows first, then the bitmap that says they are there
            try:
                array.flush()  # written rows reach the file (the kernel keeps or drops their pages)
                _write_atomic(why, json.dumps(reasons).encode())
                buf = io.BytesIO()
                np.save(buf, state, allow_pickle=False)
                _write_atomic(done, buf.getvalue())
            except OSError as exc:
                _skip_cache(self.root, exc)

        self._fill(array, state, reasons, paths, keys, size, resize, progress, entries, checkpoint)
        failed = {r: reasons.get(str(r), "unreadable") for r in np.flatnonzero(state == 2).tolist()}
        kept = np.flatnonzero(state == 1)
        try:
            source = partial
            if failed:  # unreadable rows: copy the readable ones into a compact file, chunk by chunk
                source = folder / f"{name}.compact.npy"
                out = (
                    np.lib.format.open_memmap(
                        source, mode="w+", dtype=np.uint8, shape=(len(kept), size, size)
                    )
                    if len(kept)
                    else None
                )
                for j in range(0, len(kept), 512):
                    out[j : j + 512] = array[kept[j : j + 512]]  # type: ignore[index]
                    if (j // 512 + 1) % 16 == 0:  # after every 16th chunk (8,192 rows)
                        out.flush()  # type: ignore[union-attr]
                if out is not None:
                    out.flush()
                else:
                    np.save(source, np.zeros((0, size, size), np.uint8))
            array.flush()
            rows = kept.tolist()
            info = {"version": STORE_VERSION, "size": size, "resize": resize, "rows": n,
                    "failed": {str(r): v for r, v in failed.items()},
                    "files": [paths[r] for r in rows], "keys": [keys[r] for r in rows]}  # fmt: skip
            _write_atomic(folder / f"{name}.json", json.dumps(info).encode())
            os.replace(source, folder / f"{name}.npy")
            for f in (partial, done, why):
                f.unlink(missing_ok=True)
        except OSError as exc:
            _skip_cache(self.root, exc)
            self.enabled = False
            return None
        return self._open_store(folder, name, n, size)

    def _fill(
        self,
        array: np.ndarray,
        state: np.ndarray,
        reasons: dict[str, str],
        paths: list[str],
        keys: list[str],
        size: int,
        resize: str,
        progress: Callable[[int], None] | None,
        entries: bool,
        checkpoint: Callable[[], None] | None,
    ) -> tuple[np.ndarray, dict]:
        """Decode the rows still to do into ``array`` (per-image cache entries first, then worker
        processes), marking each in ``state``; ``checkpoint`` persists progress every few seconds."""
        todo = np.flatnonzero(state == 0).tolist()
        if progress and len(todo) < len(state):
            progress(len(state) - len(todo))
        last = time.monotonic()
        decode: list[int] = []
        try:
            for r in todo:
                if self.enabled:
                    hit = load_npy(self._entry(keys[r]))
                    if hit is not None and hit.shape == (size, size):
                        array[r], state[r] = hit, 1
                        if progress:
                            progress(1)
                        continue
                    bad = self._entry(keys[r], ".bad")
                    if bad.exists():
                        reasons[str(r)], state[r] = bad.read_text(encoding="utf-8", errors="replace"), 2
                        if progress:
                            progress(1)
                        continue
                decode.append(r)
            jobs = [(paths[r], size, resize) for r in decode]
            for r, (image, error) in zip(decode, _decode_all(jobs, None), strict=True):
                if image is None:
                    reasons[str(r)], state[r] = error or "unreadable", 2
                    self._remember_bad(keys[r], reasons[str(r)])
                else:
                    array[r], state[r] = image, 1
                    self.decoded += 1
                    if entries and self.enabled and not save_npy(self._entry(keys[r]), image):
                        entries = False
                if progress:
                    progress(1)
                if checkpoint and time.monotonic() - last > 5:
                    checkpoint()
                    last = time.monotonic()
        finally:
            if checkpoint:
                checkpoint()
        failed = {r: reasons.get(str(r), "unreadable") for r in np.flatnonzero(state == 2).tolist()}
        if failed and checkpoint is None:
            array = array[state == 1]
        return array, failed

    def _remember_bad(self, key: str, reason: str) -> None:
        if not self.enabled:
            return
        bad = self._entry(key, ".bad")
        try:
            bad.parent.mkdir(parents=True, exist_ok=True)
            bad.write_text(reason, encoding="utf-8")
        except OSError as exc:
            _skip_cache(self.root, exc)

    def features_path(self, key: str) -> Path:
        """Where frozen-backbone features with this key live."""
        return self.root / "features" / f"{key}.npy"


def _allocate(path: Path) -> None:
    """Reserve the disk blocks of a new store file now: a full disk fails here with an OSError, not
    later with SIGBUS while writing through the memory map."""
    with open(path, "r+b") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG):
                raise
            # the filesystem cannot preallocate (EOPNOTSUPP, EINVAL): write through as usual


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _file_keys(paths: Sequence[str], size: int, resize: str) -> tuple[list[str | None], dict[str, str]]:
    """The cache key of each path (``None`` where the file cannot be read) and why those failed."""
    keys: list[str | None] = [None] * len(paths)
    failures: dict[str, str] = {}
    for i, path in enumerate(paths):
        try:
            keys[i] = file_key(path, size, resize)
        except OSError as exc:
            failures[path] = f"cannot read file: {exc.strerror or exc}"
    return keys, failures


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
