"""One training run, end to end: run folder → data → fit → evaluate → audit → report.

The orchestration lives here and only here; every step below is its own layer (:mod:`cxrlab.data`,
:mod:`cxrlab.training`, :mod:`cxrlab.evaluation`, :mod:`cxrlab.audit`, :mod:`cxrlab.reports`), none of
which imports another step above it.
"""

from __future__ import annotations

import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L

from cxrlab.audit import quick_audit
from cxrlab.config import RunConfig
from cxrlab.data.index import codes_meta
from cxrlab.data.prepare import PreparedData, prepare_data
from cxrlab.data.splits import COLUMNS, SPLITS_FILE, split_rows
from cxrlab.errors import CxrError
from cxrlab.evaluation.inference import load_run
from cxrlab.evaluation.ood import fit_run as fit_ood_guard
from cxrlab.evaluation.scoring import evaluate_trained
from cxrlab.explain.report import for_run as attention_for_run
from cxrlab.metrics import write_metrics
from cxrlab.models import ModelSpec, get_spec, load_torchvision_weights
from cxrlab.reports.html import write_run_report
from cxrlab.runs import (
    LOCK,
    MARKER,
    RUN_ENTRIES,
    RunLock,
    atomic_write,
    check_out_path,
    check_outside_inputs,
    claim_folder,
    clear_folder,
    disk_full,
    run_lock,
    settle_stale,
    write_csv,
    write_status,
)
from cxrlab.runtime import environment, quiet_lightning, resolve_device
from cxrlab.training.train import TrainingInterrupted, fit, launched_rank


class Stages:
    """The wall time of a command, stage by stage: :meth:`lap` closes the stage that just ran, so the stages
    follow one another without gaps and add up to the command's time (metrics.json ``timing``)."""

    def __init__(self, started: float | None = None) -> None:
        """``started``: the command's ``time.perf_counter()`` at its start, when earlier than now; the time
        up to now is then the stage ``startup`` (the CLI loading torch, Lightning and cxrlab's modules)."""
        self.t0 = time.perf_counter() if started is None else started
        self._last = self.t0
        self.seconds: dict[str, float] = {}
        if started is not None:
            self.lap("startup")

    def lap(self, name: str) -> float:
        """Close stage ``name`` (time since the previous lap, added to what ``name`` had); returns it."""
        now = time.perf_counter()
        took = now - self._last
        self.seconds[name] = self.seconds.get(name, 0.0) + took
        self._last = now
        return took

    def move(self, seconds: float, source: str, target: str) -> None:
        """Count ``seconds`` measured inside stage ``source`` as ``target``'s (e.g. training's fit() computes
        the frozen features, then the validation and test inputs at the evaluation precision)."""
        seconds = max(0.0, min(seconds, self.seconds.get(source, 0.0)))
        self.seconds[source] = self.seconds.get(source, 0.0) - seconds
        self.seconds[target] = self.seconds.get(target, 0.0) + seconds

    def write_timed(self, metrics: dict[str, Any], write: Callable[[dict[str, Any]], None]) -> None:
        """``write(metrics)`` (metrics.json and the report) with the command's time in ``metrics["timing"]``:
        written once to time the report stage, then again with the final numbers, so that the HTML and the
        JSON agree (the second writing is the only part of the command outside them)."""
        metrics.setdefault("timing", {}).update(self.timing())
        write(metrics)
        self.lap("report")
        metrics["timing"].update(self.timing())
        write(metrics)

    def timing(self) -> dict[str, Any]:
        """``{"command_s": …, "stages": {stage: seconds}}`` up to the last lap (3 decimals)."""
        return {
            "command_s": round(self._last - self.t0, 3),
            "stages": {k: round(v, 3) for k, v in self.seconds.items()},
        }


class DiskFull(CxrError):
    """No space left on the device holding the run folder."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (status interrupted, run resumable) but exiting with 143."""


def prepare_out(
    out: Path, resume: bool, overwrite: bool, protect: tuple[str | Path, ...] = ()
) -> tuple[RunLock, bool]:
    """Make ``out`` ready for this run and take its lock; return the lock and whether ``out`` was created.

    An existing run is replaced only with ``overwrite``, and only when cxrlab wrote it (its marker) and it
    holds nothing else (:func:`cxrlab.runs.check_replaceable`); a second process writing the same folder
    stops at once (:class:`cxrlab.runs.RunInUse`). Nothing is changed when this fails.
    """
    check_out_path(out, "--resume" if resume else "--out")
    if resume:
        if not (out / "config.yaml").is_file():
            raise CxrError(f"--resume {out}: not a run folder (no config.yaml)")
        return run_lock(out), False
    created = not out.exists()
    busy = (
        f"{out} already exists and is not empty; choose another --out, add --overwrite, "
        f"or continue it with --resume {out}"
    )
    lock = claim_folder(out, "train", RUN_ENTRIES, "a training run folder", overwrite, busy, protect)
    return lock, created


@contextmanager
def sigterm_as_interrupt(state: dict[str, Any]) -> Iterator[None]:
    """For the duration (main thread only; the old handlers are restored): SIGTERM raises like Ctrl-C, and
    both record themselves in ``state["signal"]``, so that an error raised while unwinding from the signal
    (e.g. ``ImportError: initialization failed`` from an extension module interrupted while loading) is
    still reported as the interruption it is. An ignored SIGINT (``nohup``, ``&``) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, frame) -> None:
        state["signal"] = signum
        raise Terminated()

    def on_int(signum, frame) -> None:
        state["signal"] = signum
        raise KeyboardInterrupt

    previous_term = signal.signal(signal.SIGTERM, on_term)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, on_int)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)


def _discard(out: Path, created: bool) -> None:
    """Remove what this command wrote into ``out`` (the folder itself when this command created it)."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    try:
        clear_folder(out, RUN_ENTRIES)
        (out / MARKER).unlink(missing_ok=True)
        (out / LOCK).unlink(missing_ok=True)
    except OSError:
        pass


def _error_text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, CxrError) else f"{exc.__class__.__name__}: {exc}"


def _ended(
    exc: BaseException, out: Path, resume: bool, created: bool, state: dict[str, Any]
) -> BaseException:
    """Record truthfully how the run ended (status.json, or the half-made folder removed) and return the
    exception to raise: a one-line :class:`CxrError` where there is one."""
    term = isinstance(exc, Terminated) or state.get("signal") == signal.SIGTERM
    if state.get("signal") is not None and not isinstance(exc, KeyboardInterrupt | TrainingInterrupted):
        exc = KeyboardInterrupt()  # whatever the signal's unwinding raised, the run was interrupted
    word, code = ("terminated (SIGTERM)", 143) if term else ("interrupted", 130)
    if isinstance(exc, TrainingInterrupted):  # Lightning stopped fit; status.json is written
        if term:
            exc = TrainingInterrupted(str(exc).replace("interrupted", word, 1))
            exc.exit_code = code
        return exc
    if isinstance(exc, KeyboardInterrupt):
        if state["evaluating"]:
            # after training, while evaluating: the checkpoints are complete, only the scoring is not
            write_status(out, "interrupted", stage="evaluation")
            msg = (
                f"{word} during evaluation; training had finished and {out}/checkpoints is kept: "
                f"finish it with `cxr train --resume {out}`"
            )
        elif state["fitting"]:
            write_status(out, "interrupted", stage="training")
            msg = f"{word}; the run folder {out} is kept: continue with `cxr train --resume {out}`"
        elif resume:
            write_status(out, "interrupted", stage=state["stage"])
            msg = f"{word} before training resumed; continue later with `cxr train --resume {out}`"
        else:
            _discard(out, created)
            where = "while decoding images" if state["stage"] == "decoding" else "before training started"
            msg = f"{word} {where}; nothing was trained, {out} removed"
        err = TrainingInterrupted(msg)
        err.exit_code = code
        return err
    full = disk_full(exc)
    if full is not None:
        path = full.filename or out
        if not resume and not state["fitting"]:
            _discard(out, created)
            return DiskFull(
                f"no space left on device while writing {path}; nothing was trained and {out} was removed: "
                "free space and run again"
            )
        msg = (
            f"no space left on device while writing {path}; "
            f"free space and resume with `cxr train --resume {out}`"
        )
        write_status(out, "failed", error=msg)
        return DiskFull(msg)
    if not resume and not state["fitting"]:
        _discard(out, created)
    else:
        write_status(out, "failed", error=_error_text(exc))
    return exc


def train(
    cfg: RunConfig,
    out: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: list[L.Callback] | None = None,
    protect: tuple[str | Path, ...] = (),
    started: float | None = None,
) -> dict[str, Any]:
    """Train and evaluate a run described by ``cfg``; return metrics.json's content.

    ``callbacks`` are extra Lightning callbacks (e.g. a sweep's pruning callback); ``protect``: more input
    paths (the config file) that ``overwrite`` must never delete, besides the data folders; ``started``:
    ``time.perf_counter()`` when the command began, for metrics.json's ``timing`` (:class:`Stages`). Under DDP
    every process runs this function; only global rank 0 writes the run folder and evaluates,
    the other ranks return ``{}``.

    The run folder is locked for the whole command. A run that fails or is interrupted before its first
    epoch removes what it wrote (nothing half-made is left behind); a run that fails or is interrupted
    later keeps its folder, with ``status.json`` saying what happened, so it can be inspected or resumed.
    SIGTERM is handled like Ctrl-C (exit 143); a full disk ends in one line.
    """
    out = Path(out)
    state: dict[str, Any] = {"stage": "starting", "fitting": False, "evaluating": False}
    state["clock"] = Stages(started)
    if launched_rank() != 0:  # a DDP worker: rank 0 owns the run folder
        return _run(cfg, out, resume, progress, state, list(callbacks or []))
    inputs = tuple(protect) + ((cfg.data.path, cfg.data.extra_train) if cfg is not None else ())
    if cfg is not None and not resume:
        check_outside_inputs(out, (cfg.data.path, cfg.data.extra_train))
    lock, created = prepare_out(out, resume, overwrite, tuple(p for p in inputs if p))
    try:
        with sigterm_as_interrupt(state):
            try:
                return _run(cfg, out, resume, progress, state, list(callbacks or []))
            except BaseException as exc:
                final = _ended(exc, out, resume, created, state)
                if final is exc:
                    raise
                raise final from None
    finally:
        lock.release()


def _run(
    cfg: RunConfig,
    out: Path,
    resume: bool,
    progress: bool,
    state: dict[str, bool],
    callbacks: list[L.Callback],
) -> dict[str, Any]:
    quiet_lightning()
    t0 = time.perf_counter()
    clock: Stages = state.setdefault("clock", Stages())
    zero = launched_rank() == 0
    if resume:
        cfg = RunConfig.load(out / "config.yaml")
        if not (out / "checkpoints" / "last.ckpt").is_file():
            raise CxrError(
                f"--resume {out}: no checkpoints/last.ckpt yet (interrupted before the first epoch); "
                "start the run again"
            )
        stale = settle_stale(out) if zero else None
        if stale:
            print(f"warning: {out} was interrupted ({stale}); resuming it", file=sys.stderr)
    # resolved below (the model's input size, autoencoder codes' size and channels; each assignment
    # validated), on a copy: the caller's config, e.g. a notebook's, stays as it was given
    cfg = cfg.model_copy(deep=True)
    spec = get_spec(cfg.model.name)
    if cfg.eval.explain != "off":
        from cxrlab.explain.methods import get_method

        get_method(cfg.eval.explain_method, "eval.explain_method")  # an unknown name: one line, at once
    if cfg.model.pretrained and spec.weights and spec.family == "torchvision":
        load_torchvision_weights(spec.weights)  # fail in seconds, before decoding any image
    if cfg.model.pretrained and spec.family == "timm":
        from cxrlab.models.timm_models import ensure_timm_weights

        ensure_timm_weights(spec.name)
    if cfg.model.pretrained and spec.ensure_weights is not None:  # families with their own cache (xrv/…)
        spec.ensure_weights()
    _codes_input(cfg, spec)  # autoencoder codes as --data: input size and channels come from them
    if cfg.data.image_size is None:
        cfg.data.image_size = spec.input_size
    device = resolve_device(cfg.train.device)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    if not resume and zero:
        atomic_write(out / "config.yaml", cfg.to_yaml())
    if zero:
        write_status(out, "running", **({"resumed": True} if resume else {}))

    state["stage"] = "decoding"
    clock.lap("setup")
    data = prepare_data(cfg.data, cfg.data.image_size, cfg.train.seed, progress=progress)
    clock.lap("decode")
    state["stage"] = "preparing"
    audit: dict[str, Any] = {}
    if zero:
        _write_splits(out, data)
        # the data's leakage and shortcut warnings before any training: a user can stop a doomed run now
        audit = quick_audit(data, cfg.data.cache_dir)
        _print_warnings(audit.get("warnings", []))
    clock.lap("audit")
    trained = fit(cfg, out, data, spec, device, resume, progress, state, callbacks)
    if trained is None:  # DDP worker: rank 0 evaluates and writes the run folder
        return {}
    clock.lap("train")
    clock.move(trained.timing.get("features_s", 0.0), "train", "features")
    clock.move(trained.timing.get("eval_inputs_s", 0.0), "train", "evaluate")
    state["evaluating"], state["stage"] = True, "evaluating"
    metrics = evaluate_trained(cfg, out, trained, t0, progress=progress)
    fit_ood_guard(out, trained, load_run(out), seed=cfg.train.seed)  # ood.json + ood.npz
    metrics["environment"] = environment()
    metrics["audit"] = audit
    clock.lap("evaluate")
    metrics.update(_attention(out, data, progress))
    clock.lap("explain")
    if cfg.train.tensorboard:
        from cxrlab.training.tensorboard import log_test_metrics

        log_test_metrics(out / "tensorboard", metrics["test"], trained.epochs_done)
    _write_results(out, cfg, metrics, clock)
    _write_card(out)
    write_status(out, "finished", epochs_done=trained.epochs_done)
    return metrics


def _write_results(out: Path, cfg: RunConfig, metrics: dict[str, Any], clock: Stages) -> None:
    """metrics.json and report.html, with the command's wall time in ``timing``: ``command_s`` from the
    start of the command (`cxr train` once Python started; its imports are the stage ``startup``) to the
    report written, and each stage's seconds in ``timing.stages`` (they add up to ``command_s``). The report
    stage is measured by :meth:`Stages.write_timed`."""

    def write(m: dict[str, Any]) -> None:
        write_metrics(out / "metrics.json", m)
        write_run_report(out, cfg, m)

    clock.write_timed(metrics, write)


def _write_card(out: Path) -> None:
    """model_card.md and model_card.json from what the run folder now holds
    (:mod:`cxrlab.reports.model_card`); a card that cannot be written is a warning line, never a lost run."""
    from cxrlab.reports.model_card import write_card

    try:
        write_card(out)
    except Exception as exc:  # noqa: BLE001 - the run is trained, scored and reported
        print(f"warning: no model card ({exc.__class__.__name__}: {exc})", file=sys.stderr)


def _print_warnings(warnings: list[str]) -> None:
    """The audit's warnings on stderr, one line each (yellow on a terminal)."""
    tty = sys.stderr.isatty()
    for w in warnings:
        print(f"\x1b[33mwarning: {w}\x1b[0m" if tty else f"warning: {w}", file=sys.stderr)


def _attention(out: Path, data: PreparedData, progress: bool) -> dict[str, Any]:
    """The report's Grad-CAM gallery and lung-attention score, from the saved model (a fast-path run's
    full network) on the test images just scored (:mod:`cxrlab.explain.report`; its progress bar shows
    only when heatmaps are actually computed)."""
    loaded = load_run(out)
    return attention_for_run(
        loaded, data.images.get("test"), out, warn=lambda s: print(s, file=sys.stderr), progress=progress
    )


def _codes_input(cfg: RunConfig, spec: ModelSpec) -> None:
    """Codes from `cxr autoencoder encode` set the input size and channels; code models need codes."""
    meta = codes_meta(cfg.data.path)
    if meta is not None:
        channels, size, _ = meta["shape"]
        if size < 8:
            raise CxrError(f"codes of {size}x{size} are too small to train on (need 8x8); use less --depth")
        cfg.data.image_size = cfg.data.image_size or size
        cfg.model.in_channels = cfg.model.in_channels or channels
    elif spec.family == "codes" and cfg.data.path:
        raise CxrError(
            f"model {spec.name} trains on autoencoder codes, not images: encode the data first with "
            "`cxr autoencoder encode AE --data DATA --out CODES`, then pass --data CODES"
        )


def _write_splits(out: Path, data: PreparedData) -> None:
    """splits.csv: every image with its split, class, patient group and content hash — the test split that
    `cxr evaluate RUN` scores (:mod:`cxrlab.data.splits`)."""
    write_csv(out / SPLITS_FILE, split_rows(data.index), COLUMNS)
