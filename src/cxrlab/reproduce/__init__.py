"""`cxr reproduce`: run the five reports' experiments and set their numbers beside cxrlab's.

The reports (``../shared/reports/``) are data here (``reports.yaml``): every experiment with its recipe
(``cxrlab/recipes/``), the numbers the report prints and where, and what the ``quick`` budget changes.
``reproduce`` runs them in order into ordinary cxrlab folders and writes ``reproduce.md``,
``reproduce.html`` and ``reproduce.json``: per report, its value beside cxrlab's with a 95% CI, the wall
time here beside the time the report states, and the same plots.
"""

from __future__ import annotations

import datetime as _dt
import platform
import signal
import time
from pathlib import Path
from typing import Any

from cxrlab._version import __version__
from cxrlab.errors import ConfigError, CxrError, DataError
from cxrlab.reproduce.catalog import Report, load_catalog, select_reports
from cxrlab.reproduce.document import build_context, write_html, write_markdown
from cxrlab.reproduce.runner import BUDGETS, ExperimentInterrupted, Runner
from cxrlab.runs import (
    check_out_folder,
    check_outside_inputs,
    check_writable,
    read_json,
    run_lock,
    write_json,
)

__all__ = ["BUDGETS", "load_catalog", "reproduce", "select_reports"]

OUTPUTS = ("reproduce.md", "reproduce.html", "reproduce.json", *load_catalog().keys())

BUDGET_TEXT = {
    "quick": (
        "The **quick** budget fits on 2 CPU cores in minutes: where an experiment would take hours "
        "here it runs fewer epochs and/or fewer images, and each experiment says exactly what changed. "
        "Frozen-backbone recipes compute the backbone's features once and train only the head. "
        "Numbers from a quick run show that the pipeline reproduces the report's setup, "
        "not the report's accuracy."
    ),
    "full": "The **full** budget runs every recipe with the report's own settings (hours to days on a CPU).",
}


def check_data_root(data_root: Path, reports: list[Report]) -> None:
    """Every data set the chosen reports need is under ``data_root`` (one line naming what is missing)."""
    if not data_root.is_dir():
        raise DataError(
            f"--data-root {data_root} is not a folder; give the folder that holds covid-challenge/ "
            "and kermany-224/ (e.g. ../shared/data)"
        )
    needed = sorted({d for r in reports for d in r.datasets})
    missing = [d for d in needed if not (data_root / d).is_dir()]
    if missing:
        raise DataError(
            f"--data-root {data_root} has no {', '.join(m + '/' for m in missing)} (needed by report(s) "
            f"{', '.join(r.id for r in reports)}); point it at the folder that holds {', '.join(needed)}"
        )


def machine() -> str:
    """This machine in a few words (CPU model and cores)."""
    import os

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def reproduce(
    which: str | list[str],
    data_root: str | Path,
    out: str | Path,
    budget: str = "quick",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the chosen reports' experiments into ``out``; write the document; return reproduce.json's content.

    Running again into the same ``out`` reuses every experiment that finished with the same plan. The first
    Ctrl-C or SIGTERM stops it (:class:`ReproduceInterrupted`, exit 130 or 143): the running experiment is
    recorded as interrupted and none after it starts (a failed experiment, by contrast, lets the others go
    on)."""
    from cxrlab.pipeline.train import sigterm_as_interrupt  # torch and Lightning: not for `--list`

    if budget not in BUDGETS:
        raise ConfigError(f"--budget {budget!r}: give quick or full")
    reports = select_reports(which)
    data_root, out = Path(data_root).resolve(), Path(out)
    check_data_root(data_root, reports)
    check_outside_inputs(out, (data_root,))
    check_out_folder(out, OUTPUTS)
    check_writable(out)  # creates it
    lock = run_lock(out, "another `cxr reproduce` is writing it; wait for it or choose another --out")
    state: dict[str, Any] = {}
    try:
        with sigterm_as_interrupt(state):  # SIGTERM raises like Ctrl-C; both are recorded in state
            runner = Runner(data_root, out, budget, seed, progress)
            return _run_all(runner, reports, state)
    finally:
        lock.release()


class ReproduceInterrupted(CxrError):
    """Ctrl-C (exit 130) or SIGTERM (exit 143) during `cxr reproduce`."""

    exit_code = 130


def _run_all(runner: Runner, reports: list[Report], state: dict[str, Any]) -> dict[str, Any]:
    data_root, out, budget, progress = runner.data_root, runner.out, runner.budget, runner.progress
    previous = read_json(out / "reproduce.json") if (out / "reproduce.json").is_file() else {}
    results: dict[str, Any] = {}
    if previous.get("budget") == budget and previous.get("data_root") == str(data_root):
        results = dict(previous.get("results", {}))
    runner.previous = results
    t0 = time.perf_counter()
    current = ""
    try:
        for report in reports:
            for exp in report.experiments:
                current = exp.key
                if progress:
                    print(f"report {report.id} · {exp.id} ({exp.kind})", flush=True)
                try:
                    results[exp.key] = runner.run(report, exp)
                except ExperimentInterrupted as stop:
                    results[exp.key] = stop.result
                    _write(out, reports, results, budget, data_root, time.perf_counter() - t0)
                    raise _stopped(stop.cause, state, exp.key, out) from None
                if results[exp.key]["status"] == "failed" and progress:
                    print(f"  failed: {results[exp.key]['error']}", flush=True)
                _write(out, reports, results, budget, data_root, time.perf_counter() - t0)
        return _write(out, reports, results, budget, data_root, time.perf_counter() - t0)
    except KeyboardInterrupt as exc:  # between two experiments, or while writing the document
        raise _stopped(exc, state, current, out) from None


def _stopped(cause: BaseException, state: dict[str, Any], key: str, out: Path) -> ReproduceInterrupted:
    """The one line that ends an interrupted reproduction, with SIGTERM's exit status 143."""
    from cxrlab.pipeline.train import Terminated

    term = (
        isinstance(cause, Terminated)
        or state.get("signal") == signal.SIGTERM
        or getattr(cause, "exit_code", None) == 143
    )
    word = "terminated (SIGTERM)" if term else "interrupted"
    where = f" during {key}, recorded as interrupted" if key else ""
    err = ReproduceInterrupted(
        f"{word}{where}; the finished experiments are kept in {out}: run the same command again to continue"
    )
    err.exit_code = 143 if term else 130
    return err


def _write(
    out: Path, reports: list[Report], results: dict[str, Any], budget: str, data_root: Path, wall_s: float
) -> dict[str, Any]:
    catalog = load_catalog()
    shown = {r.id for r in reports} | {key.split("/")[0] for key in results}
    reports = [catalog[rid] for rid in catalog if rid in shown]
    meta = {
        "budget": budget,
        "budget_text": BUDGET_TEXT[budget],
        "data_root": str(data_root),
        "machine": machine(),
        "version": __version__,
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "wall_s": wall_s,
        "reports": [r.id for r in reports],
    }
    doc = {**meta, "results": results}
    write_json(out / "reproduce.json", doc)
    ctx = build_context(reports, results, meta)
    write_markdown(out / "reproduce.md", ctx)
    write_html(out / "reproduce.html", ctx)
    return doc
