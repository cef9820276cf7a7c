"""The run folder: everything needed to reproduce and inspect a run.

::

    RUN/config.yaml       complete config (``cxr train --config RUN/config.yaml`` repeats the run)
    RUN/splits.csv        every image with its split and class
    RUN/history.csv       epoch, train_loss, train_acc, val_loss, val_acc, seconds
    RUN/predictions.csv   per test image: path, true, pred, p_<class> (for paired tests between runs)
    RUN/metrics.json      test metrics with CIs, timing, parameters, audit warnings
    RUN/model.safetensors final weights (no pickle: loading never executes code)
    RUN/model.json        classes, input size, channels, normalisation, operating threshold
    RUN/checkpoints/      Lightning checkpoints (best.ckpt, last.ckpt) for --resume
    RUN/logs/             CSV and TensorBoard logs
    RUN/plots/*.png       curves, confusion matrix, ROC, t-SNE, reliability diagram
    RUN/report.html       one self-contained page
    RUN/status.json       running (pid, host, start) | finished | interrupted | failed, with the reason
    RUN/.cxrlab-run       marker: this folder was created by cxrlab (``--overwrite`` needs it)
    RUN/.cxrlab-lock      advisory lock held by the one process writing the folder (removed when it is
                          released: a finished folder has none)
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import tempfile
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

from cxrlab.errors import CxrError, ModelError

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write a file via a temporary sibling and rename, so readers never see half a file.

    The temporary name carries this process's id, so that an interruption landing anywhere — even between
    creating the temporary file and the ``try`` — leaves no ``.NAME.*.tmp`` behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{os.getpid()}."
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; run files are ordinary files
        os.replace(tmp, path)
    except OSError as exc:
        _remove_temporaries(path.parent, prefix)
        if exc.errno is not None and exc.filename != str(path):  # name the file, not the temporary one
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        _remove_temporaries(path.parent, prefix)
        raise


def _remove_temporaries(folder: Path, prefix: str) -> None:
    for leftover in folder.glob(f"{glob_escape(prefix)}*.tmp"):
        leftover.unlink(missing_ok=True)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return _clean(obj.item())
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """JSON with NaN/inf written as null."""
    atomic_write(path, json.dumps(_clean(obj), indent=2) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON file, with a one-line error when missing or damaged."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CxrError(f"{path} not found; is this a cxrlab run folder?") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CxrError(f"{path} is damaged (not valid JSON)") from None


def write_csv(path: str | Path, rows: list[dict[str, Any]], fields: list[str] | None = None) -> None:
    """Write rows as CSV (atomically)."""
    import io

    fields = fields or (list(rows[0]) if rows else [])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields})
    atomic_write(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV file (empty list when absent)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def check_writable(folder: Path) -> None:
    """Create ``folder`` and prove it can be written, or fail with one line."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # a probe of this process's own: two workers of one sweep check the same folder at the same moment
        with tempfile.NamedTemporaryFile(dir=folder, prefix=WRITE_PROBE):
            pass
    except OSError as exc:
        raise CxrError(f"cannot write to {folder}: {exc.strerror or exc}; choose another --out") from None


def require_run(run: str | Path) -> Path:
    """A path that must be an existing run folder."""
    path = Path(run)
    if not (path / "config.yaml").is_file():
        raise CxrError(f"{path} is not a cxrlab run folder (no config.yaml); give the --out of a `cxr train`")
    return path


def save_weights(path: Path, module) -> None:
    """A module's weights as safetensors (no pickle: loading never executes code), written atomically."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write(path, save(state))


def read_weights(path: Path, missing: str) -> dict[str, Any]:
    """Tensors from a safetensors file; absent (``missing`` says what to do), damaged or tampered files
    are a one-line :class:`ModelError`, never executed."""
    from safetensors.torch import load

    if not path.is_file():
        raise ModelError(f"{path} not found: {missing}")
    try:
        return load(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - any decoding failure means a damaged file
        raise ModelError(
            f"{path} is corrupted or not a safetensors file ({exc.__class__.__name__}); retrain or restore it"
        ) from None


def save_model(run: Path, model, meta: dict[str, Any]) -> None:
    """Save weights as safetensors plus a JSON description."""
    save_weights(run / "model.safetensors", model)
    write_json(run / "model.json", meta)


def load_state(run: Path) -> dict[str, Any]:
    """Read model.safetensors; a damaged or tampered file is refused, never executed."""
    return read_weights(
        run / "model.safetensors", f"the run did not finish; `cxr train --resume {run}` completes it"
    )


# --------------------------------------------------------------------------- marker, guard, lock, status

MARKER = ".cxrlab-run"  # JSON {kind, version, created}: written when cxrlab creates an output folder
LOCK = ".cxrlab-lock"  # advisory lock (fcntl.flock) held by the one process writing the folder
WRITE_PROBE = ".cxrlab-write-test-"  # check_writable's probe file (a unique suffix per process)
_OWN = (MARKER, LOCK)

# Top-level entries `cxr train` and `cxr evaluate` write into a run folder.
RUN_ENTRIES: tuple[str, ...] = (
    "config.yaml",
    "splits.csv",
    "history.csv",
    "predictions.csv",
    "metrics.json",
    "model.safetensors",
    "model.json",
    "ood.json",
    "ood.npz",
    "status.json",
    "report.html",
    "model_card.json",
    "model_card.md",
    "checkpoints",
    "logs",
    "tensorboard",
    "plots",
    "evaluation",
    "external",
)

_INPUTS: set[Path] = set()


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def protect(*paths: str | Path | None) -> None:
    """Record input paths (data folders, config files) of this process: `--overwrite` never deletes
    a folder that is, or holds, one of them."""
    for p in paths:
        if p:
            _INPUTS.add(_real(p))


def check_outside_inputs(
    out: str | Path, inputs: tuple[str | Path | None, ...], option: str = "--out"
) -> None:
    """Refuse an output folder inside an input folder (a run written into the data folder would be read as
    a class of images by the next run, and would change the data)."""
    real = _real(out)
    for given in inputs:
        if given and _real(given).is_dir() and _within(real, _real(given)):
            raise CxrError(
                f"{option} {out} is inside the input folder {given}; writing there would change the data "
                "(and the next run would read the outputs as images): choose an --out outside it"
            )


def _within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _danger(out: Path, extra: tuple[str | Path, ...] = ()) -> str | None:
    """Why deleting the contents of ``out`` would hurt something that is not a run, or None."""
    real = _real(out)
    if real == Path(real.anchor):
        return "it is the file system root"
    if _within(_real(Path.home()), real):
        return "it is (or holds) your home folder"
    try:
        cwd = _real(Path.cwd())
    except OSError:
        cwd = None
    if cwd is not None and _within(cwd, real):
        return "it is (or holds) the current folder"
    for p in sorted(_INPUTS | {_real(e) for e in extra if e}):
        if _within(p, real):
            return f"it holds {p}, which this command reads"
    return None


def _allowed(name: str, entries: tuple[str, ...]) -> bool:
    import fnmatch

    if name in _OWN or name.startswith(WRITE_PROBE):
        return True
    return any(fnmatch.fnmatchcase(name, e) or fnmatch.fnmatchcase(name, f".{e}.*.tmp") for e in entries)


def read_marker(folder: str | Path) -> dict[str, Any] | None:
    """The marker of a folder cxrlab created (None when absent or unreadable)."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(folder: str | Path, kind: str) -> None:
    """Mark ``folder`` as written by cxrlab (``kind``: train, autoencoder, gan, …)."""
    import time

    from cxrlab._version import __version__

    write_json(
        Path(folder) / MARKER,
        {"kind": kind, "version": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S")},
    )


def check_replaceable(
    out: str | Path, kind: str, entries: tuple[str, ...], what: str, protect: tuple[str | Path, ...] = ()
) -> None:
    """Refuse (one line, nothing changed) unless ``out`` is a folder cxrlab wrote as ``kind`` and holds
    nothing but the ``entries`` (names or glob patterns) cxrlab writes there; never the root, home or
    current folder, nor a folder holding this command's inputs."""
    out = Path(out)
    refuse = f"refusing to delete {out} with --overwrite"
    reason = _danger(out, protect)
    if reason:
        raise CxrError(f"{refuse}: {reason}; choose another --out")
    marker = read_marker(out)
    if marker is None:
        raise CxrError(
            f"{refuse}: it was not written by this cxrlab (no {MARKER} marker); "
            "choose another --out, or delete it yourself if you are sure"
        )
    if marker.get("kind") != kind:
        raise CxrError(f"{refuse}: it is a {marker.get('kind')!r} folder, not {what}; choose another --out")
    foreign = sorted(p.name for p in out.iterdir() if not _allowed(p.name, entries))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise CxrError(
            f"{refuse}: it holds files cxrlab did not write ({shown}); move them or choose another --out"
        )


def clear_folder(out: str | Path, entries: tuple[str, ...]) -> None:
    """Delete the cxrlab-written entries of ``out`` (never anything else, never the lock file); links are
    removed, not followed."""
    import shutil

    for p in Path(out).iterdir():
        if p.name == LOCK or not _allowed(p.name, entries):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def claim_folder(
    out: Path,
    kind: str,
    entries: tuple[str, ...],
    what: str,
    overwrite: bool,
    busy: str,
    protect: tuple[str | Path, ...] = (),
) -> RunLock:
    """Take ``out`` for writing as cxrlab's ``kind`` folder and return its lock.

    A folder that is not empty is replaced only with ``overwrite``, and then only as
    :func:`check_replaceable` allows (just ``entries`` are deleted); ``busy`` is the message without
    ``overwrite``. A second writer stops at once (:class:`RunInUse`). Nothing is changed when this fails."""
    lock = run_lock(out) if (out / LOCK).is_file() else None
    try:
        if out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
            if not overwrite:
                raise CxrError(busy)
            check_replaceable(out, kind, entries, what, protect)
            lock = lock or run_lock(out)
            clear_folder(out, entries)
        check_writable(out)
        lock = lock or run_lock(out)
        write_marker(out, kind)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


def check_out_path(out: str | Path, option: str = "--out") -> Path:
    """``out`` must be a folder or not exist yet (a file or a device is refused in one line)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CxrError(f"{out} is a file, not a folder; {option} takes a folder (new, or empty)")
    return out


def _host() -> str:
    import socket

    return socket.gethostname()


class RunInUse(CxrError):
    """Another process holds the folder's lock."""


class RunLock:
    """An advisory lock on a folder (``fcntl.flock`` on ``FOLDER/.cxrlab-lock``), released by
    :meth:`release` or when the process ends (also after kill -9).

    :meth:`release` removes the lock file (a finished run folder keeps none), while still holding the lock;
    a process that opened the file before it was removed finds, once it gets the lock, that the path no
    longer names the file it locked, and starts again on a new one — so two processes never both hold it.
    A kill -9 leaves the file behind, unlocked: the next command takes it as usual."""

    def __init__(self, folder: str | Path, hint: str = "wait for it or choose another --out"):
        import fcntl

        self.folder = Path(folder)
        self.fd: int | None = None
        self._writable, self._pid = False, os.getpid()
        path = self.folder / LOCK
        for _ in range(100):  # another holder removing the file as we open it: open the new one
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                writable = True
            except OSError:
                try:  # a read-only run: lock its existing file if there is one (nobody can write it anyway)
                    fd, writable = os.open(path, os.O_RDONLY | os.O_CLOEXEC), False
                except OSError:
                    return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = self.holder()
                os.close(fd)
                who = f" (pid {holder.get('pid')} on {holder.get('host')})" if holder else ""
                raise RunInUse(f"{self.folder} is in use by another cxr process{who}; {hint}") from None
            if _same_file(fd, path):
                break
            os.close(fd)  # locked a file its holder removed on release: lock the one now at the path
        else:
            raise RunInUse(f"{self.folder} is in use by another cxr process; {hint}")
        self.fd, self._writable, self._pid = fd, writable, os.getpid()
        if writable:
            info = json.dumps({"pid": os.getpid(), "host": _host()}).encode()
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, info, 0)
            except OSError:
                pass  # a full disk: the lock itself still holds

    def holder(self) -> dict[str, Any]:
        """pid and host of the process that took the lock last (empty when unknown)."""
        try:
            data = json.loads((self.folder / LOCK).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def release(self) -> None:
        """Remove the lock file and unlock (idempotent)."""
        if self.fd is not None:
            # a forked child (decoding workers) closes its copy only: the parent still holds the lock
            if self._writable and self._pid == os.getpid() and _same_file(self.fd, self.folder / LOCK):
                # removed while still locked (see the class docstring); a read-only or vanished folder:
                # the lock is released all the same
                with contextlib.suppress(OSError):
                    (self.folder / LOCK).unlink()
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    def __del__(self) -> None:
        try:  # noqa: SIM105 - no contextlib here: at interpreter exit the modules it uses may be gone
            self.release()
        except Exception:  # noqa: BLE001
            pass

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    """``path`` still names the file open as ``fd``."""
    try:
        st, open_st = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (open_st.st_dev, open_st.st_ino)


def run_lock(folder: str | Path, hint: str = "wait for it or choose another --out") -> RunLock:
    """Take ``folder``'s lock or fail at once with one line naming the holder (use as a context manager)."""
    return RunLock(folder, hint)


def _lock_free(folder: Path) -> bool:
    import fcntl

    try:
        fd = os.open(folder / LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True  # released (a holder removes the file as it lets go)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also releases the lock if we took it


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_status(run: str | Path, status: str, **fields: Any) -> None:
    """Write RUN/status.json; "running" records pid, host and start time. Best effort: never raises for a
    full or read-only disk (a full disk is retried in place, which needs no new blocks)."""
    import time

    record: dict[str, Any] = {"status": status}
    if status == "running":
        record.update(pid=os.getpid(), host=_host(), started=time.strftime("%Y-%m-%d %H:%M:%S"))
    record.update(fields)
    path = Path(run) / "status.json"
    try:
        write_json(path, record)
    except OSError:
        try:
            with path.open("r+b") as fh:
                fh.write((json.dumps(_clean(record), indent=2) + "\n").encode("utf-8"))
                fh.truncate()
        except OSError:
            pass


def stale_reason(run: str | Path, status: dict[str, Any], holding_lock: bool = False) -> str | None:
    """For a "running" status whose process is gone (dead pid on this host, or a free lock), why it is
    stale ("process N ended without updating status"); None when it may still be running.
    ``holding_lock``: this process holds RUN's lock, so any other writer is gone."""
    if status.get("status") != "running":
        return None
    pid = status.get("pid")
    if pid == os.getpid() and status.get("host") == _host():
        return None
    gone = holding_lock or _lock_free(Path(run))
    if not gone and isinstance(pid, int) and status.get("host") == _host():
        gone = not _pid_alive(pid)
    if not gone:
        return None
    return f"process {pid if pid is not None else '?'} ended without updating status"


def read_status(run: str | Path, holding_lock: bool = False) -> dict[str, Any]:
    """RUN/status.json ({} when absent or damaged); a stale "running" is reported as interrupted, with the
    reason and the stale record under ``stale``."""
    try:
        status = json.loads((Path(run) / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(status, dict):
        return {}
    reason = stale_reason(run, status, holding_lock)
    if reason:
        return {"status": "interrupted", "reason": reason, "stale": status}
    return status


def settle_stale(run: str | Path) -> str | None:
    """With RUN's lock held: record a stale "running" status as interrupted; return the reason."""
    status = read_status(run, holding_lock=True)
    if "stale" not in status:
        return None
    write_status(run, "interrupted", reason=status["reason"])
    return status["reason"]


def disk_full(exc: BaseException) -> OSError | None:
    """The ENOSPC (or EDQUOT) error behind ``exc``, if any."""
    import errno

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


RUN_MARKERS = ("config.yaml", "status.json", "metrics.json", "model.safetensors")


def check_out_folder(out: Path, ours: tuple[str, ...], option: str = "--out") -> None:
    """Refuse an output folder that is a file, a run folder, or a non-empty folder holding anything
    but ``ours`` (the files this command writes there), so nothing else is ever overwritten."""
    if out.exists() and not out.is_dir():
        raise CxrError(f"{option} {out} is an existing file; give a folder (new, or written by this command)")
    if not out.is_dir():
        return
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    run_files = sorted(names & set(RUN_MARKERS) - set(ours))
    if run_files:
        raise CxrError(
            f"{option} {out} is a run folder (it has {', '.join(run_files)}); write elsewhere, "
            "e.g. a new folder beside it"
        )
    foreign = sorted(names - set(ours))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
        raise CxrError(
            f"{option} {out} already holds files not written by this command ({shown}); "
            "choose a new or empty folder"
        )
